"""Config values this machine or run cannot honour, refused before anything is built (no detectron2 counterpart).

Each would otherwise fail later with a traceback that does not name the key: ``MODEL.DEVICE cuda`` without a
GPU (torch's "Torch not compiled with CUDA enabled" from deep inside the model's constructor), a
``LIGHTNING.PRECISION`` that converts the weights of a detectron2-style model (a dtype mismatch in its first
layer), ``SOLVER.IMS_PER_BATCH`` not divisible by the number of processes (an error from one worker).
:func:`check_device` also runs on its own for evaluation, which builds only the model.
"""

from __future__ import annotations

from typing import Any

import torch

from d2lightning.config.lookup import cfg_get

__all__ = ["check_device", "check_trainable"]

# Lightning precisions that convert the model's weights ("true" precisions other than float32).
_CONVERTING = {
    "16-true": "float16",
    "bf16-true": "bfloat16",
    "64-true": "float64",
    "64": "float64",
    64: "float64",
}


def check_trainable(cfg: Any, world_size: int) -> None:
    """Refuse a config that cannot train here (see the module docstring).

    Args:
        cfg: a d2lightning or detectron2 config (after ``auto_scale_workers``).
        world_size: the number of training processes.

    Raises:
        ValueError: naming the key, its value, and what to do.
    """
    check_device(cfg)
    batch = cfg.SOLVER.IMS_PER_BATCH
    if batch <= 0 or batch % world_size != 0:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH={batch} must be a positive multiple of the number of processes ({world_size}, "
            "--num-gpus x --num-machines): each process takes an equal share of the batch"
        )
    precision = cfg_get(cfg, "LIGHTNING.PRECISION", default=None)
    if precision in _CONVERTING:
        dtype = _CONVERTING[precision]
        raise ValueError(
            f"LIGHTNING.PRECISION={precision!r} converts the model's weights to {dtype}, but detectron2-style models "
            "normalise their input images in float32 themselves, so the first layer would fail on the dtype "
            f"mismatch: use 'bf16-mixed' or '16-mixed' (autocast, float32 weights), or set "
            "trainer.lightning_kwargs['precision'] for a model that converts its inputs"
        )


def check_device(cfg: Any) -> None:
    """Refuse a ``MODEL.DEVICE`` that torch cannot use on this machine.

    Raises:
        ValueError: naming ``MODEL.DEVICE``, for an unknown device, CUDA without a CUDA GPU, or a CUDA index
            beyond the GPUs present.
    """
    value = str(cfg.MODEL.DEVICE)
    try:
        device = torch.device(value)
    except RuntimeError as e:
        raise ValueError(f"MODEL.DEVICE={value!r} is not a device torch knows ({e}); use 'cpu' or 'cuda'") from None
    if device.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ValueError(
            f"MODEL.DEVICE={value!r}, but no CUDA GPU is available here (torch.cuda.is_available() is False: "
            f"{'a CPU-only torch build' if torch.version.cuda is None else 'no GPU or driver found'}); "
            "set MODEL.DEVICE cpu"
        )
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(
            f"MODEL.DEVICE={value!r}, but this machine has {torch.cuda.device_count()} CUDA GPU(s) (indices from 0)"
        )

"""The config's ``LIGHTNING`` section, turned into ``lightning.pytorch.Trainer`` arguments and callbacks.

``DefaultTrainer`` puts :func:`lightning_kwargs_from_cfg` into ``lightning_kwargs`` and registers
:func:`lightning_callbacks_from_cfg` after its hooks. A config without a ``LIGHTNING`` section (e.g. a detectron2
``CfgNode``) gives detectron2's behaviour. Key by key:

- ``PRECISION``: Lightning's precision plugin (the forward runs under its autocast, the backward and the step go
  through it). ``"16-mixed"`` on CPU runs as ``"bf16-mixed"`` (float16 autocast is a GPU feature; Lightning
  makes the same switch), with a warning. Exclusive with ``SOLVER.AMP.ENABLED`` (detectron2's ``AMPTrainer``).
- ``ACCUMULATE_GRAD_BATCHES``: d2lightning's accumulation (``SimpleTrainer.accumulate_grad_batches``: one
  iteration = N micro-batches, one optimizer step), applied to the trainer that runs the step when training
  starts. Lightning's own argument is refused under the manual optimization detectron2's step needs.
- ``EMA.ENABLED`` / ``EMA.DECAY``: an :class:`~d2lightning.engine.hooks.EMA` hook; evaluations use the average.
- ``LOGGERS`` / ``CALLBACKS``: built from class paths; loggers get ``save_dir=OUTPUT_DIR`` unless given one.
- ``STRATEGY`` / ``DEVICES`` / ``NUM_NODES``: DefaultTrainer builds its model, sharded data loader and
  rank-dependent hooks per process, so the processes must exist before it: start them with ``launch``
  (``d2lightning train --num-gpus N --num-machines M``), ``srun`` or ``torchrun``; d2lightning then joins them
  with DDP. In such a run ``STRATEGY`` may be ``"auto"`` or ``"ddp"`` and ``DEVICES`` / ``NUM_NODES`` are checked
  against the processes; in a single process they go to Lightning as they are, but more than one device or
  node is an error (Lightning would start processes after the trainer was built). ``"fsdp"`` shards the model over
  the processes with FSDP2 on Lightning's ``ModelParallelStrategy`` (:func:`shards_model`), cut into units as
  ``FSDP.*`` says (:func:`sharding_from_cfg`); it needs two processes or more, and excludes ``SOLVER.AMP.ENABLED``
  (use ``PRECISION: bf16-mixed`` or ``FSDP.PARAM_DTYPE``).
- ``ACCELERATOR``, ``LOG_EVERY_N_STEPS``, ``DETERMINISTIC``, ``PROGRESS_BAR``: the Trainer arguments of the
  same names (the bar is an :class:`~d2lightning.engine.lightning.progress.IterationProgressBar`).
"""

from __future__ import annotations

import importlib
import inspect
import logging
from typing import Any

from d2lightning.config.lookup import cfg_get
from d2lightning.engine.trainer_base import _is_hook
from d2lightning.utils import comm

__all__ = [
    "instantiate_class_entry",
    "lightning_callbacks_from_cfg",
    "lightning_kwargs_from_cfg",
    "sharding_from_cfg",
    "shards_model",
]

logger = logging.getLogger(__name__)

_FULL_PRECISION = ("32", "32-true")
_FLOAT16_MIXED = ("16", "16-mixed")


def _section(cfg: Any) -> Any:
    return cfg_get(cfg, "LIGHTNING", default=None)


def shards_model(cfg: Any) -> bool:
    """Whether ``LIGHTNING.STRATEGY`` is ``"fsdp"`` (the model is sharded, not wrapped in DDP)."""
    return str(cfg_get(cfg, "LIGHTNING.STRATEGY", default="auto")).lower() == "fsdp"


def sharding_from_cfg(cfg: Any) -> Any:
    """The :class:`~d2lightning.engine.distributed.fsdp.FSDPSharding` of ``LIGHTNING.FSDP`` (None without FSDP)."""
    from d2lightning.engine.distributed.fsdp import FSDPSharding

    if not shards_model(cfg):
        return None
    section = cfg.LIGHTNING.FSDP
    return FSDPSharding(
        units=list(section.UNITS),
        min_params=section.MIN_PARAMS,
        reshard_after_forward=bool(section.RESHARD_AFTER_FORWARD),
        param_dtype=section.PARAM_DTYPE,
        reduce_dtype=section.REDUCE_DTYPE,
    )


def lightning_kwargs_from_cfg(cfg: Any) -> dict[str, Any]:
    """Trainer arguments from ``cfg.LIGHTNING`` (``{}`` without that section); see the module docstring.

    Raises:
        ValueError: naming the key, for a logger that cannot be built, mixed precision set twice, FSDP in one
            process or with AMPTrainer, or a device count that the processes of the run contradict.
    """
    from lightning.pytorch.loggers import Logger

    section = _section(cfg)
    if section is None:
        return {}
    kwargs: dict[str, Any] = {
        "precision": _precision(cfg, section),
        "log_every_n_steps": section.LOG_EVERY_N_STEPS,
        "deterministic": section.DETERMINISTIC,
        "enable_progress_bar": bool(section.PROGRESS_BAR),
    }
    if section.ACCELERATOR != "auto":
        kwargs["accelerator"] = section.ACCELERATOR
    kwargs.update(_parallel_kwargs(section))
    if shards_model(cfg) and cfg_get(cfg, "SOLVER.AMP.ENABLED", default=False):
        raise ValueError(
            "SOLVER.AMP.ENABLED with LIGHTNING.STRATEGY='fsdp': AMPTrainer's GradScaler does not work on sharded "
            "gradients; use LIGHTNING.PRECISION 'bf16-mixed' (or LIGHTNING.FSDP.PARAM_DTYPE) instead"
        )
    loggers = []
    for i, entry in enumerate(section.LOGGERS):
        lg = instantiate_class_entry(entry, f"LIGHTNING.LOGGERS[{i}]", cfg)
        if not isinstance(lg, Logger):
            raise ValueError(f"LIGHTNING.LOGGERS[{i}]: {_name(lg)} is not a lightning.pytorch.loggers.Logger")
        loggers.append(lg)
    if loggers:
        kwargs["logger"] = loggers
    return kwargs


def lightning_callbacks_from_cfg(cfg: Any) -> list[Any]:
    """Hooks and Lightning callbacks from ``cfg.LIGHTNING``, in this order:
    :class:`~d2lightning.engine.hooks.EMA` (``EMA.ENABLED``), ``CALLBACKS`` in config order, the progress bar
    (``PROGRESS_BAR``). (``ACCUMULATE_GRAD_BATCHES`` is given to the step's trainer by ``DefaultTrainer``.)

    Raises:
        ValueError: naming the key, for a callback that cannot be built or is neither a Lightning ``Callback``
            nor a detectron2-style hook.
    """
    from lightning.pytorch.callbacks import Callback

    from d2lightning.engine.hooks import EMA
    from d2lightning.engine.lightning.progress import IterationProgressBar

    section = _section(cfg)
    if section is None:
        return []
    callbacks: list[Any] = []
    if section.EMA.ENABLED:
        callbacks.append(EMA(section.EMA.DECAY))
    for i, entry in enumerate(section.CALLBACKS):
        cb = instantiate_class_entry(entry, f"LIGHTNING.CALLBACKS[{i}]", cfg)
        if not (isinstance(cb, Callback) or _is_hook(cb)):
            raise ValueError(
                f"LIGHTNING.CALLBACKS[{i}]: {_name(cb)} is neither a lightning.pytorch.callbacks.Callback nor a "
                "detectron2-style hook"
            )
        callbacks.append(cb)
    if section.PROGRESS_BAR:
        callbacks.append(IterationProgressBar())
    return callbacks


def instantiate_class_entry(entry: Any, key: str, cfg: Any = None) -> Any:
    """Build ``"pkg.mod.Class"`` or ``{"class_path": ..., "init_args": {...}}``.

    A class whose constructor takes ``save_dir`` gets ``cfg.OUTPUT_DIR`` unless ``init_args`` sets it (so
    ``lightning.pytorch.loggers.CSVLogger`` writes next to detectron2's files).

    Raises:
        ValueError: naming ``key`` when the class path does not import or the object cannot be built.
    """
    if isinstance(entry, str):
        class_path, init_args = entry, {}
    else:
        class_path, init_args = entry["class_path"], dict(entry.get("init_args") or {})
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"{key}: cannot import {class_path!r}: {e}") from e
    output_dir = getattr(cfg, "OUTPUT_DIR", None) if cfg is not None else None
    if output_dir and "save_dir" not in init_args:
        try:
            if "save_dir" in inspect.signature(cls).parameters:
                init_args["save_dir"] = output_dir
        except (TypeError, ValueError):
            pass
    try:
        return cls(**init_args)
    except Exception as e:
        raise ValueError(f"{key}: {class_path}(**{init_args}) failed: {type(e).__name__}: {e}") from e


def _on_cpu(cfg: Any, section: Any) -> bool:
    if section.ACCELERATOR != "auto":
        return bool(section.ACCELERATOR == "cpu")
    device = getattr(getattr(cfg, "MODEL", None), "DEVICE", "cpu")
    return str(device).startswith("cpu")


def _precision(cfg: Any, section: Any) -> Any:
    precision = section.PRECISION
    amp = getattr(getattr(getattr(cfg, "SOLVER", None), "AMP", None), "ENABLED", False)
    if amp and str(precision) not in _FULL_PRECISION:
        raise ValueError(
            f"SOLVER.AMP.ENABLED=True and LIGHTNING.PRECISION={precision!r} both set the precision: use "
            "LIGHTNING.PRECISION (Lightning's precision plugin) or SOLVER.AMP.ENABLED (detectron2's AMPTrainer), "
            "not both"
        )
    if str(precision) in _FLOAT16_MIXED and _on_cpu(cfg, section):
        logger.warning(
            f"LIGHTNING.PRECISION={precision!r} runs as 'bf16-mixed' on CPU: float16 autocast is for GPUs "
            "(Lightning makes the same switch)"
        )
        return "bf16-mixed"
    return precision


def _parallel_kwargs(section: Any) -> dict[str, Any]:
    """``strategy`` / ``devices`` / ``num_nodes`` (see the module docstring)."""
    strategy, devices, num_nodes = section.STRATEGY, section.DEVICES, section.NUM_NODES
    count = _device_count(devices)
    world = comm.get_world_size()
    fsdp = str(strategy).lower() == "fsdp"
    if str(strategy).lower().startswith("fsdp") and not fsdp:
        raise ValueError(
            f"LIGHTNING.STRATEGY={strategy!r}: d2lightning shards detectron2 models with FSDP2; use 'fsdp' and the "
            "LIGHTNING.FSDP.* keys (CPU offload is not supported)"
        )
    if fsdp and world < 2:
        raise ValueError(
            "LIGHTNING.STRATEGY='fsdp' shards the model over several processes, but this run has one: start two or "
            "more with `d2lightning train --num-gpus N` (N >= 2), srun or torchrun, or use 'auto' for one process"
        )
    if world > 1:
        local = comm.get_local_size()
        if count is not None and count != local:
            raise ValueError(
                f"LIGHTNING.DEVICES={devices!r}, but this run has {local} processes on this machine (one per "
                "device): set it to 'auto' or to the number of processes started per machine (--num-gpus)"
            )
        if num_nodes != 1 and num_nodes != world // local:
            raise ValueError(
                f"LIGHTNING.NUM_NODES={num_nodes}, but this run spans {world // local} machines (--num-machines)"
            )
        if fsdp:
            from d2lightning.engine.distributed.fsdp import fsdp_strategy

            return {"strategy": fsdp_strategy(world)}
        if strategy not in ("auto", "ddp"):
            raise ValueError(
                f"LIGHTNING.STRATEGY={strategy!r}: the processes of this run train with DDP, which d2lightning "
                "joins itself; use 'auto', 'ddp' or 'fsdp'"
            )
        return {}
    if (count is not None and count > 1) or num_nodes > 1:
        raise ValueError(
            f"LIGHTNING.DEVICES={devices!r} / LIGHTNING.NUM_NODES={num_nodes} ask for several processes, but this "
            "run has one: DefaultTrainer builds its model, data loader and hooks per process, so start the "
            "processes first with `d2lightning train --num-gpus N [--num-machines M]` (detectron2's launch), "
            "srun or torchrun"
        )
    kwargs: dict[str, Any] = {}
    if devices != "auto":
        kwargs["devices"] = devices
    if strategy != "auto":
        kwargs["strategy"] = strategy
    return kwargs


def _device_count(devices: Any) -> int | None:
    """How many devices ``LIGHTNING.DEVICES`` asks for; None for "auto" / -1 (all of them)."""
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1"):
            return None
        if "," in text:
            return len([d for d in text.split(",") if d.strip()])
        return int(text)
    return None if devices == -1 else int(devices)


def _name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"

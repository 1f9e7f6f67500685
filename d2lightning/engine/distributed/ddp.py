"""detectron2 ``engine/defaults.py: create_ddp_model``: wrap a model in DDP when there are several ranks."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from d2lightning.utils import comm

__all__ = ["create_ddp_model"]


def create_ddp_model(model: torch.nn.Module, *, fp16_compression: bool = False, **kwargs: Any) -> torch.nn.Module:
    """Wrap ``model`` in ``DistributedDataParallel`` if there is more than one process (detectron2's).

    At world size 1 the model is returned unchanged. Otherwise it becomes
    ``DistributedDataParallel(model, **kwargs)``, with ``device_ids=[comm.get_local_rank()]`` when the
    model's parameters are on CUDA and ``device_ids`` was not given (detectron2 always adds it; a CPU model
    must have none). Must be called on every rank (DDP broadcasts rank 0's parameters and buffers).

    Args:
        model: the module to wrap.
        fp16_compression: register ``torch``'s ``fp16_compress_hook``: gradients are all-reduced in float16.
        **kwargs: other ``DistributedDataParallel`` arguments (``broadcast_buffers``,
            ``find_unused_parameters``...).

    Returns:
        ``model`` or its ``DistributedDataParallel`` wrapper.

    Raises:
        TypeError: when ``model`` is not a ``torch.nn.Module``.

    Example::

        model = create_ddp_model(model, broadcast_buffers=False)
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if comm.get_world_size() == 1:
        return model
    if "device_ids" not in kwargs and any(p.is_cuda for p in model.parameters()):
        kwargs["device_ids"] = [comm.get_local_rank()]
    ddp = DistributedDataParallel(model, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp

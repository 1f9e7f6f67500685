"""A model sharded with torch's FSDP2 (``fully_shard``), as code outside the training steps sees it.

During training every rank runs each forward and backward together, and each sharding unit gathers its weights for
them. Outside the training steps (evaluation, where the ranks get different numbers of batches) that would hang:
:func:`gathered_weights` gives every rank the full weights for a while, so each runs forward passes on its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["fsdp_modules", "full_state_dict", "gathered_weights", "holds_shards", "is_sharded", "mark_resharding"]

_RESHARD_ATTR = "_d2lightning_reshard_after_forward"  # the unit's own setting, restored after gathered_weights
_GATHERED_ATTR = "_d2lightning_gathered_depth"


def fsdp_modules(model: Any) -> list[Any]:
    """The modules of ``model`` that ``fully_shard`` made units (the model itself last when it is one)."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, nn.Module):
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)][::-1]


def is_sharded(model: Any) -> bool:
    """Whether ``model`` (or a module inside it) was sharded with ``fully_shard``."""
    return bool(fsdp_modules(model))


def mark_resharding(module: nn.Module, reshard_after_forward: bool) -> None:
    """Record the ``reshard_after_forward`` a unit was sharded with (what :func:`gathered_weights` restores)."""
    setattr(module, _RESHARD_ATTR, reshard_after_forward)


@contextlib.contextmanager
def gathered_weights(model: Any) -> Iterator[None]:
    """Every unit's full weights on every rank for a while: a collective on entry and on exit, none per forward.

    Every rank must enter it (as every rank enters detectron2's distributed evaluation). Nested uses gather once. A
    model that is not sharded is left alone.
    """
    modules = fsdp_modules(model)
    depth = getattr(model, _GATHERED_ATTR, 0) if modules else 0
    if not modules or depth:
        if modules:
            setattr(model, _GATHERED_ATTR, depth + 1)
        try:
            yield
        finally:
            if modules:
                setattr(model, _GATHERED_ATTR, depth)
        return
    for m in modules:
        m.unshard()
        m.set_reshard_after_forward(False)
    setattr(model, _GATHERED_ATTR, 1)
    try:
        yield
    finally:
        setattr(model, _GATHERED_ATTR, 0)
        for m in modules:
            m.reshard()
            m.set_reshard_after_forward(getattr(m, _RESHARD_ATTR, True))


def holds_shards(value: Any) -> bool:
    """Whether ``value`` (a tensor, or a dict/list of them, such as a state dict) holds a sharded tensor (DTensor)."""
    if isinstance(value, dict):
        return any(holds_shards(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(holds_shards(v) for v in value)
    if not isinstance(value, torch.Tensor):
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(value, DTensor)


def full_state_dict(model: nn.Module) -> dict[str, Any]:
    """``model.state_dict()`` with every shard gathered: full tensors on the CPU, on every rank (a collective: every
    rank calls it). For a model that is not sharded, its state dict on the CPU."""
    from torch.distributed.tensor import DTensor

    return {
        key: (value.full_tensor() if isinstance(value, DTensor) else value).detach().cpu()
        if isinstance(value, torch.Tensor)
        else value
        for key, value in model.state_dict().items()
    }

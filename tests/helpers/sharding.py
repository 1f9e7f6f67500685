"""What the FSDP test jobs measure inside a run: how many parameter elements this rank stores."""

from __future__ import annotations

from typing import Any

from torch import nn

from d2lightning.engine import HookBase


def local_numel(model: nn.Module) -> int:
    """The parameter elements this rank stores (a sharded parameter's local shard only)."""
    from torch.distributed.tensor import DTensor

    return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.parameters())


class ShardProbe(HookBase):
    """After each step, record in ``seen`` the elements this rank stores (``local_numel``) and the model's total
    (``numel``)."""

    def __init__(self, seen: dict[str, Any]) -> None:
        self.seen = seen

    def after_step(self) -> None:
        model = self.trainer.model
        self.seen["local_numel"] = local_numel(model)
        self.seen["numel"] = sum(p.numel() for p in model.parameters())

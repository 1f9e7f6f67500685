"""Module-level worker functions for the distributed training tests (spawned processes must import them)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from tests.helpers.distributed import write_result


class _Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss_a": self.linear(batch).pow(2).mean(), "loss_b": self.linear(batch).abs().mean()}


def _rank_data(rank: int):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(100 + rank)  # every rank sees different data, as a sharded loader gives
    while True:
        yield torch.randn(8, 4, generator=g)


def train_simple_trainer(out_dir: str, wrap: bool) -> None:
    """SimpleTrainer.train with hooks and a checkpointer on every rank of a launched run."""
    from d2lightning.checkpoint import DetectionCheckpointer
    from d2lightning.engine import SimpleTrainer, create_ddp_model, default_writers, hooks
    from d2lightning.utils import comm

    torch.manual_seed(0)
    model = _Regressor()
    if wrap:
        model = create_ddp_model(model, broadcast_buffers=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SimpleTrainer(model, _rank_data(comm.get_rank()), optimizer)
    ckpt_dir = os.path.join(out_dir, "run")
    checkpointer = DetectionCheckpointer(model, ckpt_dir, optimizer=optimizer, trainer=trainer)
    writers = default_writers(ckpt_dir, 6) if comm.is_main_process() else []
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.PeriodicCheckpointer(checkpointer, 3) if comm.is_main_process() else None,
            hooks.PeriodicWriter(writers, period=2) if writers else None,
        ]
    )
    trainer.train(0, 6)
    inner = model.module if wrap else model
    write_result(
        out_dir,
        comm.get_rank(),
        {
            "world_size": comm.get_world_size(),
            "rank": comm.get_rank(),
            "iter": trainer.iter,
            "global_step": trainer.pl_trainer.global_step,
            "pl_world": trainer.pl_trainer.world_size,
            "weight": inner.linear.weight.detach().flatten().tolist(),
            "has_total_loss": "total_loss" in trainer.storage.histories(),
            "files": sorted(p.name for p in Path(ckpt_dir).iterdir()) if comm.is_main_process() else [],
        },
    )


def detectron2_local_rank(out_dir: str) -> None:
    """What a real detectron2's comm reports inside a d2lightning launch (needs detectron2)."""
    from detectron2.utils import comm as d2_comm

    write_result(
        out_dir,
        d2_comm.get_rank(),
        {"local_rank": d2_comm.get_local_rank(), "local_size": d2_comm.get_local_size()},
    )

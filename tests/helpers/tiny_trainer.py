"""A ``DefaultTrainer`` that trains in milliseconds: a linear model on random batches, a recording ``test``.

Used to check what the config's ``LIGHTNING`` section does through ``DefaultTrainer`` (also in spawned
processes, hence a module of its own).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from d2lightning.config import get_cfg
from d2lightning.engine import DefaultTrainer
from d2lightning.utils import comm


class TinyModel(nn.Module):
    """A linear regressor; records whether autocast was on (and its dtype) in each training forward."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.autocast_seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        self.autocast_seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        out = self.linear(batch).float()
        return {"loss_sq": out.pow(2).mean(), "loss_abs": out.abs().mean()}


class CountingStream:
    """An endless stream of (4, 3) batches (different on each rank) that counts its fetches."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.fetches = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        while True:
            self.fetches += 1
            yield torch.randn(4, 3, generator=g)


class TinyTrainer(DefaultTrainer):
    """``DefaultTrainer`` with a :class:`TinyModel`, a :class:`CountingStream` and a ``test`` that records the
    evaluated weights in ``evaluated`` (class attribute, reset by :func:`tiny_trainer_cfg`)."""

    evaluated: list[torch.Tensor] = []

    @classmethod
    def build_model(cls, cfg: Any) -> nn.Module:
        torch.manual_seed(0)
        return TinyModel()

    @classmethod
    def build_train_loader(cls, cfg: Any) -> Any:
        return CountingStream(100 + comm.get_rank())

    @classmethod
    def test(cls, cfg: Any, model: nn.Module, evaluators: Any = None) -> dict[str, Any]:
        inner = model.module if hasattr(model, "module") else model
        weight = inner.linear.weight.detach().clone()  # type: ignore[union-attr]
        cls.evaluated.append(weight)
        return {"tiny": {"w0": float(weight[0, 0])}}


def tiny_trainer_cfg(output_dir: str, *opts: Any) -> Any:
    """A config for :class:`TinyTrainer`: 4 iterations, checkpoints and evaluations every 2, no progress bar."""
    TinyTrainer.evaluated = []
    cfg = get_cfg()
    cfg.merge_from_list(
        [
            "MODEL.DEVICE", "cpu",
            "SOLVER.MAX_ITER", 4,
            "SOLVER.BASE_LR", 0.1,
            "SOLVER.WARMUP_ITERS", 0,
            "SOLVER.STEPS", (),
            "SOLVER.CHECKPOINT_PERIOD", 2,
            "TEST.EVAL_PERIOD", 2,
            "OUTPUT_DIR", output_dir,
            "LIGHTNING.PROGRESS_BAR", False,
            *opts,
        ]
    )  # fmt: skip
    return cfg

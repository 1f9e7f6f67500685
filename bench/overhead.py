"""Per-iteration overhead of d2lightning, measured against detectron2, a hand-written loop and bare Lightning.

Runs the same model, data, optimizer and per-iteration LR schedule several ways, interleaved round-robin in one
process so that machine noise hits every way alike:

1. ``hand``       a hand-written PyTorch loop;
2. ``detectron2`` detectron2's own ``SimpleTrainer`` with IterationTimer, LRScheduler, PeriodicWriter(period=20)
                  (only when detectron2 is importable);
3. ``lightning``  a plain LightningModule (automatic optimization, step-interval scheduler) in a bare Trainer;
4. ``simple``     d2lightning ``SimpleTrainer.train`` with the same three hooks;
5. ``module``     ``Trainer.fit(D2LightningModule)`` with the same three hooks as callbacks.

Two workloads: a tiny MLP (framework overhead dominates) and a small CNN with BatchNorm on 64x64 images (compute
dominates). Prints the median seconds per iteration of each way and the ratios. Usage::

    python bench/overhead.py [--repeats 5] [--mlp-iters 2000] [--cnn-iters 60] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from d2lightning.engine import D2LightningModule, SimpleTrainer, hooks
from d2lightning.utils.events import JSONWriter

WARMUP = 10  # iterations excluded from the timing of every way


# ---------------------------------------------------------------- workloads
class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"loss_mse": nn.functional.mse_loss(self.net(x), y)}


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
            )

        self.features = nn.Sequential(block(3, 32), block(32, 64), block(64, 128), block(128, 128))
        self.head = nn.Linear(128, 10)

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = self.head(self.features(x).mean(dim=(2, 3)))
        return {"loss_cls": nn.functional.cross_entropy(logits, y)}


def mlp_data() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(32, 32, generator=g), torch.randn(32, 1, generator=g)) for _ in range(16)]
    return itertools.cycle(batches)


def cnn_data() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 3, 64, 64, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(4)]
    return itertools.cycle(batches)


WORKLOADS: dict[str, tuple[Callable[[], nn.Module], Callable[[], Iterator[Any]]]] = {
    "mlp": (MLP, mlp_data),
    "cnn": (CNN, cnn_data),
}


def make(workload: str) -> tuple[nn.Module, Iterator[Any], torch.optim.Optimizer, Any]:
    model_fn, data_fn = WORKLOADS[workload]
    torch.manual_seed(0)
    model = model_fn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0 / (1.0 + 1e-3 * it))
    return model, data_fn(), optimizer, scheduler


# ---------------------------------------------------------------- timing
class _Clock(pl.Callback):
    """Starts timing at iteration WARMUP, stops at the end of training (two calls per run)."""

    def __init__(self) -> None:
        self.start = 0.0
        self.end = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == WARMUP:
            self.start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.end = time.perf_counter()


def _quiet_trainer(max_steps: int, callbacks: list[Any]) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )


def _d2_hooks(optimizer: torch.optim.Optimizer, scheduler: Any, out_dir: str) -> list[Any]:
    writer = JSONWriter(os.path.join(out_dir, "metrics.json"))
    return [hooks.IterationTimer(), hooks.LRScheduler(optimizer, scheduler), hooks.PeriodicWriter([writer], period=20)]


def run_hand(workload: str, iters: int, out_dir: str) -> float:
    model, data, optimizer, scheduler = make(workload)
    model.train()
    for it in range(iters):
        if it == WARMUP:
            start = time.perf_counter()
        batch = next(data)
        losses = sum(model(batch).values())
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
        scheduler.step()
    return (time.perf_counter() - start) / (iters - WARMUP)


class _PlainModule(pl.LightningModule):
    def __init__(self, workload: str) -> None:
        super().__init__()
        self.model, self.data, self.opt, self.sched = make(workload)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return sum(self.model(batch).values())  # type: ignore[return-value]

    def configure_optimizers(self) -> Any:
        return {"optimizer": self.opt, "lr_scheduler": {"scheduler": self.sched, "interval": "step"}}

    def train_dataloader(self) -> Any:
        return _Endless(self.data)


class _Endless:
    def __init__(self, it: Iterator[Any]) -> None:
        self.it = it

    def __iter__(self) -> Iterator[Any]:
        return self.it


def run_lightning(workload: str, iters: int, out_dir: str) -> float:
    clock = _Clock()
    _quiet_trainer(iters, [clock]).fit(_PlainModule(workload))
    return (clock.end - clock.start) / (iters - WARMUP)


def run_simple(workload: str, iters: int, out_dir: str) -> float:
    model, data, optimizer, scheduler = make(workload)
    trainer = SimpleTrainer(model, data, optimizer)
    clock = _Clock()
    trainer.register_hooks([*_d2_hooks(optimizer, scheduler, out_dir), clock])
    trainer.train(0, iters)
    return (clock.end - clock.start) / (iters - WARMUP)


def run_detectron2(workload: str, iters: int, out_dir: str) -> float:
    from detectron2.engine import HookBase as D2HookBase
    from detectron2.engine import SimpleTrainer as D2SimpleTrainer
    from detectron2.engine import hooks as d2_hooks
    from detectron2.utils.events import JSONWriter as D2JSONWriter

    class Clock(D2HookBase):
        def before_step(self) -> None:
            if self.trainer.iter == WARMUP:
                self.start = time.perf_counter()

        def after_train(self) -> None:
            self.end = time.perf_counter()

    model, data, optimizer, scheduler = make(workload)
    trainer = D2SimpleTrainer(model, data, optimizer)
    clock = Clock()
    writer = D2JSONWriter(os.path.join(out_dir, "metrics.json"))
    trainer.register_hooks(
        [
            d2_hooks.IterationTimer(),
            d2_hooks.LRScheduler(optimizer, scheduler),
            d2_hooks.PeriodicWriter([writer], period=20),
            clock,
        ]
    )
    trainer.train(0, iters)
    return (clock.end - clock.start) / (iters - WARMUP)


def run_module(workload: str, iters: int, out_dir: str) -> float:
    model, data, optimizer, scheduler = make(workload)
    clock = _Clock()
    _quiet_trainer(iters, [*_d2_hooks(optimizer, scheduler, out_dir), clock]).fit(
        D2LightningModule(model, data, optimizer)
    )
    return (clock.end - clock.start) / (iters - WARMUP)


WAYS = {
    "hand": run_hand,
    "detectron2": run_detectron2,
    "lightning": run_lightning,
    "simple": run_simple,
    "module": run_module,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mlp-iters", type=int, default=2000)
    parser.add_argument("--cnn-iters", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("d2lightning").setLevel(logging.WARNING)
    out_root = "/dev/shm" if os.path.isdir("/dev/shm") else None
    ways = dict(WAYS)
    if importlib.util.find_spec("detectron2") is None:
        print("detectron2 is not importable: its own SimpleTrainer is left out")
        del ways["detectron2"]

    for workload, iters in (("mlp", args.mlp_iters), ("cnn", args.cnn_iters)):
        samples: dict[str, list[float]] = {w: [] for w in ways}
        for _ in range(args.repeats):
            for way, fn in ways.items():
                with tempfile.TemporaryDirectory(dir=out_root) as out_dir:
                    samples[way].append(fn(workload, iters, out_dir))
        med = {w: statistics.median(v) for w, v in samples.items()}
        print(f"\n{workload}: {iters} iterations x {args.repeats} repeats, {args.threads} thread(s), median s/iter")
        for way, value in med.items():
            print(f"  {way:10s} {value * 1e6:10.1f} us/iter   x{value / med['hand']:.3f} of hand")
        reference = "detectron2" if "detectron2" in med else "lightning"
        for way in ("lightning", "simple", "module"):
            extra = (med[way] - med[reference]) * 1e6
            print(f"  {way} vs {reference}: {extra:+.1f} us/iter ({med[way] / med[reference]:.3f}x)")


if __name__ == "__main__":
    main()

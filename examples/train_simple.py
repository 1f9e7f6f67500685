"""A detectron2-style training loop on Lightning, both ways in: SimpleTrainer.train and Trainer.fit.

python examples/train_simple.py --output-dir ./output/example
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterator

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from torch import nn

from d2lightning import D2LightningModule
from d2lightning.engine import SimpleTrainer, hooks
from d2lightning.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter


class Regressor(nn.Module):
    """detectron2's model contract: a batch in, a dict of scalar losses out (in training)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        pred = self.net(x)
        return {"loss_mse": nn.functional.mse_loss(pred, y), "loss_l1": 0.1 * nn.functional.l1_loss(pred, y)}


def data() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An infinite loader, like detectron2's."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 1, generator=g)
    while True:
        x = torch.randn(64, 8, generator=g)
        yield x, x @ w + 0.01 * torch.randn(64, 1, generator=g)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", default="./output/example")
    parser.add_argument("--max-iter", type=int, default=300)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s]: %(message)s")
    os.makedirs(args.output_dir, exist_ok=True)

    # 1. detectron2 style: only the import changed.
    model = Regressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[200, 250], gamma=0.1)
    writers = [
        CommonMetricPrinter(args.max_iter),
        JSONWriter(os.path.join(args.output_dir, "metrics.json")),
        TensorboardXWriter(args.output_dir),
    ]
    trainer = SimpleTrainer(model, data(), optimizer)
    trainer.register_hooks(
        [hooks.IterationTimer(), hooks.LRScheduler(optimizer, scheduler), hooks.PeriodicWriter(writers, period=50)]
    )
    trainer.train(0, args.max_iter)

    # 2. Lightning style: the same hooks next to Lightning's own callbacks, in a Trainer you build.
    model = Regressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[200, 250], gamma=0.1)
    pl_trainer = pl.Trainer(
        max_steps=args.max_iter,
        accelerator="cpu",
        logger=pl.loggers.CSVLogger(args.output_dir, name="lightning"),
        log_every_n_steps=50,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[hooks.IterationTimer(), hooks.LRScheduler(optimizer, scheduler), LearningRateMonitor()],
    )
    pl_trainer.fit(D2LightningModule(model, data(), optimizer))
    print(f"final loss: {pl_trainer.callback_metrics or 'see ' + args.output_dir}")


if __name__ == "__main__":
    main()

"""A Lightning progress bar counted in iterations: total ``max_iter``, starting at ``start_iter``, with ETA.

detectron2's loaders are infinite, so Lightning's own bar has no total (and no ETA); this one counts
optimizer steps up to ``max_steps`` and shows the smoothed ``total_loss`` and ``lr`` from the EventStorage.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar

from d2lightning.engine.lightning.run import TrainingRun

__all__ = ["IterationProgressBar"]


class IterationProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` over iterations ``start_iter .. max_iter`` (also right after a resume).

    Args:
        refresh_rate: iterations between redraws.
    """

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self.trainer.max_steps > 0 else float("inf")

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        bar.reset(total=self.total_train_batches)
        bar.initial = trainer.global_step
        bar.n = trainer.global_step
        bar.set_description("Training")
        bar.refresh()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any) -> None:
        n = trainer.global_step
        if n % self.refresh_rate == 0 or n >= self.total_train_batches:
            bar = self.train_progress_bar
            bar.n = n
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        run = TrainingRun.of(trainer)  # the storage of the fit's detectron2 run, if it has one
        storage = run.storage if run is not None else None
        if storage is not None:
            histories = storage.histories()
            if "total_loss" in histories:
                metrics["loss"] = f"{histories['total_loss'].median(20):.4g}"
            if "lr" in histories:
                metrics["lr"] = f"{histories['lr'].latest():.3g}"
        return metrics

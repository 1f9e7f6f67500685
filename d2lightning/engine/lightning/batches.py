"""Where the training batches of a Lightning fit come from, and whether its validation can ever run.

A detectron2 step fetches its own data (``next(self._data_loader_iter)`` inside ``run_step``), which is also what
makes ``data_time`` exact. d2lightning keeps that: its ``training_step`` takes Lightning's ``dataloader_iter``, and
the step trainer reads either

* its own loader (``D2LightningModule(model, data_loader, optimizer)``, every ``SimpleTrainer.train``): detectron2
  loaders are infinite and already sharded by rank, so Lightning never sees them — it gets an endless stream of
  ticks, one consumed per iteration, so that ``batch_idx`` counts iterations; or
* Lightning's data (a datamodule, ``fit(train_dataloaders=...)`` or a ``train_dataloader()`` override) through
  :class:`LightningBatches`: Lightning injects its distributed sampler into plain map-style loaders as usual, the
  precision plugin converts each batch (``*-true`` precisions) and the strategy moves it to the device.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.plugins.precision import Precision

from d2lightning.engine.lightning import _private

__all__ = ["LightningBatches", "batch_converter", "check_validation_runs"]

_NOTHING = object()


class LightningBatches:
    """The batches Lightning hands a fit, as the iterator a detectron2 step reads (``trainer._data_loader_iter``).

    Each ``next()`` fetches one batch from the current step's ``dataloader_iter`` (so a step with gradient
    accumulation takes several), converts it with the precision plugin and moves it to the device through the
    batch-transfer hooks (the module's, or the datamodule's), in the order of Lightning's own training loop.
    When an epoch ends in the middle of a step, ``next()`` raises ``StopIteration`` (the step ends with the
    micro-batches it has); a step that gets no batch at all is an error. For a loader without a length, one batch
    is fetched ahead at the end of each step, so that Lightning knows when the epoch is over before it starts
    another step.

    Args:
        pl_trainer: the Trainer of the fit.
        pl_module: the LightningModule being fitted.
    """

    def __init__(self, pl_trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer = pl_trainer
        self._module = pl_module
        self._convert = batch_converter(pl_trainer)
        self._source: Any = None
        self._taken = 0
        self._ahead: Any = _NOTHING

    def start_step(self, dataloader_iter: Any) -> None:
        """Read this step's batches from Lightning's ``dataloader_iter``."""
        self._source = dataloader_iter
        self._taken = 0

    def end_step(self) -> None:
        """Fetch one batch ahead when the loader has no length (so ``dataloader_iter.done`` is right)."""
        source = self._source
        if self._ahead is _NOTHING and source.length is None and not source.done:
            with contextlib.suppress(StopIteration):
                self._ahead = self._fetch()

    def __iter__(self) -> LightningBatches:
        return self

    def __next__(self) -> Any:
        if self._ahead is not _NOTHING:
            batch, self._ahead = self._ahead, _NOTHING
        else:
            try:
                batch = self._fetch()
            except StopIteration:
                if self._taken == 0:
                    raise RuntimeError(
                        "Lightning's train dataloader had no batch left for this iteration (the epoch ended as it "
                        "started); the iteration cannot run"
                    ) from None
                raise
        self._taken += 1
        if self._convert is not None:
            batch = self._convert(batch)
        batch = _private.before_batch_transfer(self._module, batch)
        return self._trainer.strategy.batch_to_device(batch)  # transfer_batch_to_device, on_after_batch_transfer

    def _fetch(self) -> Any:
        batch, _, _ = next(self._source)
        return batch


def batch_converter(pl_trainer: pl.Trainer) -> Any:
    """The precision plugin's ``convert_input`` when it changes batches (``*-true`` precisions), else None."""
    plugin = pl_trainer.precision_plugin
    if type(plugin).convert_input is Precision.convert_input:
        return None
    return plugin.convert_input


def check_validation_runs(pl_trainer: pl.Trainer, val_data: bool, endless: bool | None = None) -> None:
    """Fail at fit start when validation data is given but Lightning would never validate.

    An endless training stream (detectron2 loaders, or the module's own loader) has no epoch end, and
    ``val_check_interval=1.0`` (Lightning's default) waits for it.

    Args:
        pl_trainer: the Trainer of the fit.
        val_data: whether the fit has validation data.
        endless: whether the training stream is endless; None reads it from the Trainer (after its data setup).

    Raises:
        ValueError: naming ``val_check_interval=N, check_val_every_n_epoch=None``.
    """
    if not val_data or pl_trainer.limit_val_batches == 0:
        return
    interval = pl_trainer.val_check_interval
    if endless is None:
        endless = math.isinf(pl_trainer.num_training_batches)
    if endless and not isinstance(interval, int):
        raise ValueError(
            "Validation would never run: the training data is an endless stream (detectron2 loaders are), so "
            f"Lightning's epoch never ends and Trainer(val_check_interval={interval!r}) waits for its end. Validate "
            "every N iterations with Trainer(val_check_interval=N, check_val_every_n_epoch=None)."
        )

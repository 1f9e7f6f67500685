"""Where the training batches of a Lightning fit come from, and whether its validation can ever run.

A detectron2 step fetches its own data (``next(self._data_loader_iter)`` inside ``run_step``); ``data_time`` is the
time it waited. d2lightning's training step feeds the detectron2-style trainer in one of three ways, chosen when the
fit starts:

* its own loader (``D2LightningModule(model, data_loader, optimizer)``, every ``SimpleTrainer.train``): detectron2
  loaders are infinite and already sharded by rank, so Lightning never sees them — it gets an endless stream of
  ticks, one per iteration, so that ``batch_idx`` counts iterations, and the trainer fetches from its loader;
* Lightning's data (a datamodule, ``fit(train_dataloaders=...)`` or a ``train_dataloader()`` override), one batch
  per iteration: the ordinary ``training_step(batch, batch_idx)``, so the loop is exactly the one a plain
  LightningModule gets (Lightning's distributed sampler, ``*-true`` conversion, device transfer, validation
  cadence); :class:`HandedBatches` hands each batch to the trainer, with the time Lightning's loop waited for it;
* Lightning's data with several micro-batches per iteration (``accumulate_grad_batches=N``): the step takes
  Lightning's ``dataloader_iter`` and :class:`FetchedBatches` fetches the N batches from it (conversion and
  transfer as Lightning's loop does them). Lightning then counts one batch per iteration and, for a finite loader,
  also validates after each epoch's last iteration (its rule for steps that fetch their own batches).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.plugins.precision import Precision

from d2lightning.engine.lightning import _private

__all__ = ["FetchedBatches", "HandedBatches", "batch_converter", "check_validation_runs"]

_NOTHING = object()


class HandedBatches:
    """The batch Lightning's loop hands each ``training_step``, as the iterator a detectron2 step reads.

    Each iteration takes exactly one batch: the one handed over by :meth:`hand_over`; asking for a second one in the
    same iteration raises ``StopIteration`` (as an epoch end would). Lightning fetched it before the step — and, for
    a loader without a length, the next one too — so :attr:`waited` is the time the loop spent between the end of the
    previous iteration (or validation, or the start of the epoch) and this one: what detectron2 calls ``data_time``.
    """

    def __init__(self) -> None:
        self._batch: Any = _NOTHING
        self._idle_since = time.perf_counter()
        self.waited = 0.0

    def mark_idle(self) -> None:
        """The work before the next fetch is done (the previous iteration, a validation, the epoch start)."""
        self._idle_since = time.perf_counter()

    def hand_over(self, batch: Any) -> None:
        """This iteration's batch, just received by the training step."""
        self.waited = time.perf_counter() - self._idle_since
        self._batch = batch

    def __iter__(self) -> HandedBatches:
        return self

    def __next__(self) -> Any:
        batch, self._batch = self._batch, _NOTHING
        if batch is _NOTHING:
            raise StopIteration
        return batch

    def take_wait(self) -> float:
        """The wait for the batch just taken (once: 0 afterwards)."""
        waited, self.waited = self.waited, 0.0
        return waited


class FetchedBatches:
    """Lightning's batches fetched by the step, several per iteration, as the iterator a detectron2 step reads.

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

    def __iter__(self) -> FetchedBatches:
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

    def take_wait(self) -> float:
        """Nothing to add: the step timed its own fetches."""
        return 0.0


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

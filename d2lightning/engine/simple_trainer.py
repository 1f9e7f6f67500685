"""detectron2's ``SimpleTrainer``: one data source, one optimizer, one step per iteration (or N micro-batches).

The step itself (fetch, forward, zero_grad, backward, after_backward) is :mod:`d2lightning.engine.step`'s, shared
with ``AMPTrainer``; the backward, the optimizer step and DDP's ``no_sync`` go through the trainer's step backend
(plain torch, or the Lightning Trainer of the fit).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch

from d2lightning.data.streams import StreamStateError, resumable_stream, unresumable_loader_message
from d2lightning.engine.step import forward_backward
from d2lightning.engine.trainer_base import TrainerBase
from d2lightning.utils import comm
from d2lightning.utils.events import get_event_storage
from d2lightning.utils.validation import check_int

if TYPE_CHECKING:
    from d2lightning.data.streams import TrainStream
    from d2lightning.engine.lightning.run import RunBinding

__all__ = ["SimpleTrainer"]

logger = logging.getLogger(__name__)


class SimpleTrainer(TrainerBase):
    """A trainer for the common single-cost, single-optimizer, single-data-source case.

    Each :meth:`run_step`: fetch the next batch (timed as ``data_time``), forward the model to get a loss
    dict, zero the gradients (before the forward with ``zero_grad_before_forward``), backward the summed
    loss, call the hooks' ``after_backward``, write the metrics, step the optimizer. The LR scheduler is
    *not* stepped here: the ``LRScheduler`` hook does it. A finite data loader is iterated again when it runs
    out, without disturbing the iteration count.

    Gradient accumulation (d2lightning only; in a Lightning Trainer of your own, ``accumulate_grad_batches=N`` of
    the Trainer sets it): with ``accumulate_grad_batches=N`` one iteration
    runs N micro-batches — N fetches, forwards and backwards of ``loss / N``, gradients zeroed once before the
    first backward (or the first forward) — then one optimizer step. ``iter``, ``max_iter`` and every hook
    period keep counting optimizer steps; the losses written are the means over the micro-batches (the loss of
    the N-times-larger batch for mean-reduced losses) and ``data_time`` is the sum of the N fetches.
    ``after_backward`` (like Lightning's ``on_after_backward``, which also fires per micro-batch under
    Lightning's own accumulation) runs after every micro-batch's backward, with the same ``iter``; the
    gradients are complete in the last one, and in Lightning's ``on_before_optimizer_step``. Under DDP the
    first N-1 micro-batches skip the gradient all-reduce (``no_sync``).

    Args:
        model: returns a dict of scalar losses (or one scalar tensor) in training mode.
        data_loader: an iterable of batches given to ``model`` as they are; None when a Lightning Trainer gives
            the data (a datamodule or ``train_dataloaders=``, see ``D2LightningModule``).
        optimizer: a torch optimizer.
        gather_metric_period: gather and write metrics every this many iterations.
        zero_grad_before_forward: zero the gradients before the forward instead of after it.
        async_write_metrics: write metrics from a background thread.
        accumulate_grad_batches: micro-batches per iteration (d2lightning only, keyword-only; also a settable
            attribute). 1 is detectron2's step.

    Raises:
        ValueError: when ``accumulate_grad_batches`` is not an int >= 1.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        data_loader: Iterable[Any] | None,
        optimizer: torch.optim.Optimizer,
        gather_metric_period: int = 1,
        zero_grad_before_forward: bool = False,
        async_write_metrics: bool = False,
        *,
        accumulate_grad_batches: int = 1,
    ) -> None:
        super().__init__()
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__qualname__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__qualname__}")
        check_int("gather_metric_period", gather_metric_period, minimum=1)
        model.train()
        self.model = model
        self.data_loader = data_loader
        self._data_loader_iter_obj: Iterator[Any] | None = None
        self._data_stream: TrainStream | None = None  # the own loader's resumable stream, when it has one
        self._lightning_batches: Any = None  # while a fit gives the data (its batches, as an iterator)
        self._batch_converter: Callable[[Any], Any] | None = None  # while a fit converts the batches (*-true)
        self.optimizer = optimizer
        self.gather_metric_period = gather_metric_period
        self.zero_grad_before_forward = zero_grad_before_forward
        self.async_write_metrics = async_write_metrics
        self.accumulate_grad_batches = accumulate_grad_batches
        self.concurrent_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    @property
    def accumulate_grad_batches(self) -> int:
        """Micro-batches per iteration (see the class docstring); settable, validated."""
        return self._accumulate_grad_batches

    @accumulate_grad_batches.setter
    def accumulate_grad_batches(self, value: int) -> None:
        self._accumulate_grad_batches = check_int("accumulate_grad_batches (micro-batches per iteration)", value, 1)

    def run_step(self) -> None:
        """One iteration of forward, backward and optimizer step (see the class docstring)."""
        if not self.model.training:
            raise AssertionError("[SimpleTrainer] model was changed to eval mode!")
        # fetch (timed), forward, zero_grad, backward (+ after_backward hooks): detectron2's order
        loss_dict, data_time = forward_backward(self, contextlib.nullcontext, None)
        self._dispatch_metrics(loss_dict, data_time)
        self.step_backend.optimizer_step(self.optimizer)

    def _dispatch_metrics(self, loss_dict: Mapping[str, torch.Tensor], data_time: float) -> None:
        if self.async_write_metrics:
            self.concurrent_executor.submit(self._write_metrics, loss_dict, data_time, iter=self.iter)
        else:
            self._write_metrics(loss_dict, data_time)

    @property
    def _data_loader_iter(self) -> Iterator[Any]:
        """The iterator ``run_step`` fetches from (created at first use; detectron2's name)."""
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = self._new_data_iter()
        return self._data_loader_iter_obj

    def _new_data_iter(self) -> Iterator[Any]:
        if self._lightning_batches is not None:
            return self._lightning_batches
        if self.data_loader is None:
            raise ValueError(
                f"{type(self).__name__} has no data_loader: pass one, or train in a Lightning Trainer that gives the "
                "data (D2LightningModule(model, None, optimizer) with trainer.fit(module, train_dataloaders=...))"
            )
        stream = resumable_stream(self.data_loader)
        self._data_stream = stream
        it = stream if stream is not None else iter(self.data_loader)
        convert = self._batch_converter
        return it if convert is None else _Converted(it, convert)

    # ------------------------------------------------------------ the run protocol (see TrainerBase)
    def begin_run(self, binding: RunBinding) -> None:
        """As :meth:`TrainerBase.begin_run`; the fit's batches (``binding.batches``) replace the trainer's own loader
        until :meth:`end_run`, and ``binding.convert`` is applied to every batch of its own loader."""
        self._bind(binding)
        self._lightning_batches = binding.batches
        self._batch_converter = binding.convert
        current = self._data_loader_iter_obj
        if binding.batches is not None:
            self._data_loader_iter_obj = binding.batches
        elif current is not None and binding.convert is not None:
            self._data_loader_iter_obj = _Converted(current, binding.convert)

    def end_run(self) -> None:
        """As :meth:`TrainerBase.end_run`; the trainer's own loader continues where the fit left it."""
        super().end_run()
        current = self._data_loader_iter_obj
        if current is not None and current is self._lightning_batches:
            current = None
        elif isinstance(current, _Converted):
            current = current.inner
        self._data_loader_iter_obj = current
        self._lightning_batches = self._batch_converter = None

    def _resume_data(self, start_iter: int, state: Mapping[str, Any] | None, checkpoint_has_data: bool) -> None:
        """Open the own loader's stream (when no earlier fit left one running) where the interrupted run left it.

        A recognised loader (:func:`~d2lightning.data.streams.resumable_stream`: d2lightning's and detectron2's
        train loaders, stateful loaders) continues from this rank's saved state, or — in a checkpoint without one —
        is placed from the iteration, with a warning when that is not exact; a state that no longer fits (another
        dataset, batch size, sampler...) is named in a warning and the stream restarts. Any other loader restarts,
        with a warning naming it, when the run resumes past iteration 0.
        """
        if self._lightning_batches is not None or self.data_loader is None or self._data_loader_iter_obj is not None:
            return
        self._data_loader_iter_obj = self._new_data_iter()  # creating a plain loader's iterator draws a seed
        stream = self._data_stream
        if stream is None:
            if start_iter > 0:
                logger.warning(unresumable_loader_message(self.data_loader, start_iter))
            return
        if state is not None:
            try:
                stream.load_state_dict(state)
            except StreamStateError as e:
                logger.warning(f"{e}; the data stream restarts from its first batch")
            return
        if start_iter > 0:
            if checkpoint_has_data:
                logger.warning(
                    "The checkpoint holds no data-stream position for this process: its train loader is placed from "
                    "the iteration"
                )
            note = stream.seek(start_iter * self.accumulate_grad_batches)  # an iteration took that many batches
            if note is not None:
                logger.warning(note)

    def _data_stream_state(self) -> Mapping[str, Any] | None:
        return self._data_stream.state_dict() if self._data_stream is not None else None

    def _fetch(self) -> tuple[Any, float]:
        """The next batch and the seconds spent waiting for it (detectron2's ``data_time``): here, and in
        Lightning's loop before the step when the fit hands the batch over."""
        start = time.perf_counter()
        data = self._next_batch()
        waited = time.perf_counter() - start
        if self._lightning_batches is not None:
            waited += self._lightning_batches.take_wait()
        return data, waited

    def _next_batch(self) -> Any:
        """The next batch; a finite loader of its own starts over (Lightning's data ends an epoch instead)."""
        try:
            return next(self._data_loader_iter)
        except StopIteration:
            if self._lightning_batches is not None:  # Lightning's batches: its epoch ended
                raise
            self._data_loader_iter_obj = self._new_data_iter()  # a finite loader starts over (a new epoch)
            try:
                return next(self._data_loader_iter_obj)
            except StopIteration:
                raise RuntimeError(
                    f"the data loader ({type(self.data_loader).__qualname__}) yields no data: it is empty, or an "
                    "exhausted one-shot iterator that cannot be iterated again"
                ) from None

    def reset_data_loader(self, data_loader_builder: Callable[[], Iterable[Any]]) -> None:
        """Replace the data loader with ``data_loader_builder()`` (the old one is released first)."""
        del self.data_loader
        self._data_loader_iter_obj = None
        self.data_loader = data_loader_builder()

    def _write_metrics(
        self,
        loss_dict: Mapping[str, torch.Tensor],
        data_time: float,
        prefix: str = "",
        iter: int | None = None,
    ) -> None:
        cur_iter = self.iter if iter is None else iter
        if (cur_iter + 1) % self.gather_metric_period == 0:
            try:
                SimpleTrainer.write_metrics(loss_dict, data_time, cur_iter, prefix)
            except Exception:
                logger.exception("Exception in writing metrics: ")
                raise

    @staticmethod
    def write_metrics(
        loss_dict: Mapping[str, torch.Tensor], data_time: float, cur_iter: int | None = None, prefix: str = ""
    ) -> None:
        """Gather losses and data time from every rank and put them into the storage (collective).

        Every rank puts ``rank_data_time``, ``data_time`` (the max over ranks), ``{prefix}total_loss`` (the sum of
        the rank-averaged losses) and, when there is more than one, each averaged loss — all at ``cur_iter``
        (default: the storage's iteration), smoothing hint True. (detectron2 puts all but the first on the main
        process only; here every rank has them, so Lightning's monitors decide alike on every rank.)

        Raises:
            FloatingPointError: on every rank, naming the iteration and the losses, when the total is NaN/inf.
        """
        storage = get_event_storage()
        if cur_iter is None:  # detectron2 v0.6 call form: write_metrics(loss_dict, data_time[, prefix=])
            cur_iter = storage.iter
        metrics = {k: float(v.detach().cpu().item()) for k, v in loss_dict.items()}
        metrics["data_time"] = data_time
        storage.put_scalar("rank_data_time", data_time, cur_iter=cur_iter)
        gathered = comm.all_gather(metrics)
        max_data_time = max(m.pop("data_time") for m in gathered)
        n = len(gathered)
        averaged = {k: sum(m[k] for m in gathered) / n for k in gathered[0]}
        total = sum(averaged.values())
        if not math.isfinite(total):
            raise FloatingPointError(f"Loss became infinite or NaN at iteration={cur_iter}!\nloss_dict = {averaged}")
        # detectron2 puts these on the main process only; every rank has the same values here (all_gather), and
        # puts them, so that Lightning's monitors (EarlyStopping on total_loss...) decide alike on every rank.
        storage.put_scalar("data_time", max_data_time, cur_iter=cur_iter)
        storage.put_scalar(f"{prefix}total_loss", total, cur_iter=cur_iter)
        if len(averaged) > 1:
            storage.put_scalars(cur_iter=cur_iter, **averaged)

    def state_dict(self) -> dict[str, Any]:
        ret = super().state_dict()
        ret["optimizer"] = self.optimizer.state_dict()
        return ret

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "optimizer" in state_dict:  # absent from a sharded fit's Lightning checkpoint: the strategy restores it
            self.optimizer.load_state_dict(state_dict["optimizer"])

    def after_train(self) -> None:
        super().after_train()
        self.concurrent_executor.shutdown(wait=True)


class _Converted:
    """An iterator whose items go through ``convert`` (the precision plugin's input conversion)."""

    def __init__(self, inner: Iterator[Any], convert: Callable[[Any], Any]) -> None:
        self.inner = inner
        self._convert = convert

    def __iter__(self) -> _Converted:
        return self

    def __next__(self) -> Any:
        return self._convert(next(self.inner))

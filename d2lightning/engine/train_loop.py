"""detectron2's ``engine/train_loop.py``: ``HookBase``, ``TrainerBase``, ``SimpleTrainer``, ``AMPTrainer``.

Same names, signatures, attributes and semantics as detectron2, with one difference underneath:
``TrainerBase.train(start_iter, max_iter)`` runs the loop on a ``lightning.pytorch.Trainer``. The trainer's
step (``run_step``) runs as the ``training_step`` of a :class:`~d2lightning.engine.module.D2LightningModule`
in Lightning's manual optimization, and every hook is a Lightning ``Callback`` (see
:mod:`d2lightning.engine.adapter` for the hook-point mapping).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch.nn.parallel import DistributedDataParallel

from d2lightning.engine.adapter import HOOK_METHODS, LightningRun, _D2Callback, current_run
from d2lightning.utils import comm
from d2lightning.utils.env import get_rng_states
from d2lightning.utils.events import EventStorage, get_event_storage

__all__ = ["AMPTrainer", "HookBase", "SimpleTrainer", "TrainerBase"]

logger = logging.getLogger(__name__)


class HookBase(_D2Callback):
    """Base class for hooks that can be registered with :class:`TrainerBase` — and a Lightning ``Callback``.

    Each hook can implement 5 methods. The way they are called is::

        hook.before_train()
        for iter in range(start_iter, max_iter):
            hook.before_step()
            trainer.run_step()          # calls hook.after_backward() after the backward pass
            hook.after_step()
        iter += 1
        hook.after_train()               # also when training raised

    Notes:
        1. In the hook methods, ``self.trainer`` is a weak proxy of the trainer, with ``iter``, ``start_iter``,
           ``max_iter``, ``storage``, ``model``, ``optimizer``, ``data_loader`` and whatever else the owning
           trainer has. ``trainer.iter`` is the iteration being run (0-based).
        2. A hook that does something in ``before_step`` can often do it at the end of ``after_step`` instead;
           ``before_step`` should take negligible time.
        3. Because a hook is a Lightning ``Callback``, it can go straight into
           ``lightning.pytorch.Trainer(callbacks=[...])`` next to Lightning's callbacks, and runs in list order.
        4. A hook with state returns it from ``state_dict`` and takes it back in ``load_state_dict``; it is
           saved under its class ``__qualname__`` in both detectron2 and Lightning checkpoints.
    """

    trainer: Any = None

    def before_train(self) -> None:
        """Called before the first iteration."""

    def after_train(self) -> None:
        """Called after the last iteration, and when training raised."""

    def before_step(self) -> None:
        """Called before each iteration."""

    def after_backward(self) -> None:
        """Called after the backward pass of each iteration."""

    def after_step(self) -> None:
        """Called after each iteration."""

    # ``state_dict`` (returning ``{}``: stateless) and ``load_state_dict`` come from Lightning's Callback. A
    # stateful hook overrides both; Lightning then also saves it, under ``state_key`` (the class qualname).


def _is_hook(obj: Any) -> bool:
    return any(callable(getattr(obj, name, None)) for name in HOOK_METHODS)


class TrainerBase:
    """Base class for iterative trainers with hooks.

    Attributes:
        iter: the current iteration (0-based).
        start_iter: the iteration training starts at (minimum possible iteration).
        max_iter: the iteration training ends before.
        storage: the ``EventStorage`` opened for the run.
        lightning_kwargs: extra keyword arguments for the ``lightning.pytorch.Trainer`` that :meth:`train`
            builds (for instance ``{"logger": TensorBoardLogger("out"), "precision": "bf16-mixed"}``).
        lightning_trainer: the ``lightning.pytorch.Trainer`` of the latest :meth:`train`.
    """

    def __init__(self) -> None:
        self._hooks: list[Any] = []
        self.iter: int = 0
        self.start_iter: int = 0
        self.max_iter: int = 0
        self.storage: EventStorage
        self.lightning_kwargs: dict[str, Any] = {}
        self.lightning_trainer: Any = None
        self._lightning_run: LightningRun | None = None
        self._pending_rng_states: dict[str, Any] | None = None

    def register_hooks(self, hooks: Iterable[Any | None]) -> None:
        """Register hooks, appended after those already registered; ``None`` entries are dropped.

        Hooks run in the order they are registered. A hook is a :class:`HookBase`, any object with
        detectron2's hook methods (detectron2's own hooks included), or a Lightning ``Callback``, which then
        runs at its place in the same order.

        Raises:
            TypeError: naming the entry that is none of these.
        """
        registered: list[Any] = [h for h in hooks if h is not None]
        for h in registered:
            if not (isinstance(h, Callback) or _is_hook(h)):
                raise TypeError(
                    f"register_hooks() got {h!r} ({type(h).__qualname__}), which is neither a hook (a HookBase or "
                    f"an object with any of {', '.join(HOOK_METHODS)}) nor a lightning Callback"
                )
            if _is_hook(h):
                # A weak proxy avoids a reference cycle between trainer and hook.
                h.trainer = weakref.proxy(self)
        self._hooks.extend(registered)

    def train(self, start_iter: int, max_iter: int) -> None:
        """Run iterations ``start_iter .. max_iter - 1`` on a Lightning Trainer, calling the hooks.

        Args:
            start_iter: the first iteration (for a resumed run, the last finished one + 1).
            max_iter: the iteration to stop before.

        Raises:
            ValueError: when the bounds are negative or not integers.
        """
        from d2lightning.engine.lightning_trainer import build_lightning_trainer
        from d2lightning.engine.module import D2LightningModule

        _check_bounds(start_iter, max_iter)
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        module = D2LightningModule(trainer=self)
        pl_trainer = build_lightning_trainer(self, start_iter, max_iter)
        self.lightning_trainer = pl_trainer
        with _keyboard_interrupt_propagates():
            try:
                pl_trainer.fit(module)
            except Exception:
                logger.exception("Exception during training:")
                raise

    # detectron2's hook dispatchers. Under Lightning the hooks are Lightning callbacks and Lightning calls
    # them; these methods then only run what a subclass adds (they are called once per event, after the
    # hooks). Outside a Lightning run they call the registered hooks, as detectron2 does.
    def before_train(self) -> None:
        self._call_hooks("before_train")

    def after_train(self) -> None:
        self.storage.iter = self.iter
        self._call_hooks("after_train")

    def before_step(self) -> None:
        self.storage.iter = self.iter
        self._call_hooks("before_step")

    def after_backward(self) -> None:
        """Call every hook's ``after_backward``: by Lightning's ``on_after_backward`` inside a run.

        detectron2's ``run_step`` calls it after ``losses.backward()``; d2lightning's own ``run_step`` does the
        backward through Lightning, which calls the hooks itself, so only user ``run_step`` code needs this.
        """
        run = self._lightning_run
        if run is not None and not run.closed:
            t, m = run.pl_trainer, run.pl_module
            for cb in t.callbacks:  # type: ignore[attr-defined]
                cb.on_after_backward(t, m)
            m.on_after_backward()
        else:
            self._call_hooks("after_backward")

    def after_step(self) -> None:
        self._call_hooks("after_step")

    def _call_hooks(self, name: str) -> None:
        run = self._lightning_run
        if run is not None and not run.closed:
            return
        for h in self._hooks:
            fn = getattr(h, name, None)
            if fn is not None:
                fn()

    def run_step(self) -> None:
        """One iteration. Subclasses implement it."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """``{"iteration": iter, "hooks": {qualname: state}}`` (hooks with empty state are left out)."""
        ret: dict[str, Any] = {"iteration": self.iter}
        hooks_state: dict[str, Any] = {}
        for h in self._hooks:
            fn = getattr(h, "state_dict", None)
            sd = fn() if callable(fn) else None
            if sd:
                name = type(h).__qualname__
                if name in hooks_state:
                    # detectron2 keeps the first hook of a name; a warning would repeat every save
                    continue
                hooks_state[name] = sd
        if hooks_state:
            ret["hooks"] = hooks_state
        # d2lightning: the RNG states, so that a resumed run draws the same random numbers as an uninterrupted
        # one (detectron2 ignores the key when loading).
        ret["rng"] = get_rng_states()
        return ret

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore ``iter`` and give each saved hook state to the first hook of the same class qualname.

        Saved RNG states are applied when training starts (after Lightning has set up), not here.
        """
        self.iter = state_dict["iteration"]
        self._pending_rng_states = state_dict.get("rng")
        for key, value in state_dict.get("hooks", {}).items():
            for h in self._hooks:
                if type(h).__qualname__ == key:
                    h.load_state_dict(value)
                    break
            else:
                logger.warning(f"Cannot find the hook '{key}', its state_dict is ignored.")


def _check_bounds(start_iter: Any, max_iter: Any) -> None:
    for name, value in (("start_iter", start_iter), ("max_iter", max_iter)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


class _keyboard_interrupt_propagates:
    """Lightning turns Ctrl-C into ``sys.exit(1)`` and ignores SIGINT afterwards; detectron2 re-raises it."""

    def __enter__(self) -> None:
        self._main = threading.current_thread() is threading.main_thread()
        self._handler = signal.getsignal(signal.SIGINT) if self._main else None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._main and self._handler is not None:
            signal.signal(signal.SIGINT, self._handler)
        if exc_type is SystemExit and isinstance(exc.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from None


class SimpleTrainer(TrainerBase):
    """A trainer for the common single-cost, single-optimizer, single-data-source case.

    Each :meth:`run_step`: fetch the next batch (timed as ``data_time``), forward the model to get a loss
    dict, zero the gradients (before the forward with ``zero_grad_before_forward``), backward the summed
    loss, call the hooks' ``after_backward``, write the metrics, step the optimizer. The LR scheduler is
    *not* stepped here: the ``LRScheduler`` hook does it. A finite data loader is iterated again when it runs
    out, without disturbing the iteration count.

    Gradient accumulation (d2lightning only; Lightning's ``Trainer(accumulate_grad_batches=N)`` is refused
    under the manual optimization detectron2's step needs): with ``accumulate_grad_batches=N`` one iteration
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
        data_loader: an iterable of batches given to ``model`` as they are.
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
        data_loader: Iterable[Any],
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
        if isinstance(gather_metric_period, bool) or not isinstance(gather_metric_period, int):
            raise ValueError(f"gather_metric_period must be a positive int, got {gather_metric_period!r}")
        if gather_metric_period < 1:
            raise ValueError(f"gather_metric_period must be >= 1, got {gather_metric_period}")
        model.train()
        self.model = model
        self.data_loader = data_loader
        self._data_loader_iter_obj: Iterator[Any] | None = None
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
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"accumulate_grad_batches must be an int >= 1 (micro-batches per iteration), got {value!r}"
            )
        self._accumulate_grad_batches = value

    def run_step(self) -> None:
        """One iteration of forward, backward and optimizer step (see the class docstring)."""
        if not self.model.training:
            raise AssertionError("[SimpleTrainer] model was changed to eval mode!")
        if self._accumulate_grad_batches > 1:
            loss_dict, data_time = self._run_micro_batches(contextlib.nullcontext, _identity)
            self._dispatch_metrics(loss_dict, data_time)
            _optimizer_step(self.optimizer)
            return
        start = time.perf_counter()
        data = self._next_batch()
        data_time = time.perf_counter() - start

        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        loss_dict, losses = _sum_losses(self.model(data), self.iter)
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        _backward(self, losses)
        self._dispatch_metrics(loss_dict, data_time)
        _optimizer_step(self.optimizer)

    def _run_micro_batches(
        self, forward_context: Callable[[], Any], scale: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[Mapping[str, torch.Tensor], float]:
        """The fetches, forwards and backwards of one accumulated iteration (no optimizer step).

        Returns the losses averaged over the micro-batches and the summed fetch time.
        """
        n = self._accumulate_grad_batches
        data_time = 0.0
        means: dict[str, torch.Tensor] = {}
        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        for k in range(n):
            start = time.perf_counter()
            data = self._next_batch()
            data_time += time.perf_counter() - start
            # DDP all-reduces the gradients in the last micro-batch's backward only
            with _grad_sync_skipped(self.model) if k < n - 1 else contextlib.nullcontext():
                with forward_context():
                    loss_dict, losses = _sum_losses(self.model(data), self.iter)
                if k == 0 and not self.zero_grad_before_forward:
                    self.optimizer.zero_grad()
                _backward(self, scale(losses / n))
            for name, value in loss_dict.items():
                share = value.detach() / n
                means[name] = means[name] + share if name in means else share
        return means, data_time

    def _dispatch_metrics(self, loss_dict: Mapping[str, torch.Tensor], data_time: float) -> None:
        if self.async_write_metrics:
            self.concurrent_executor.submit(self._write_metrics, loss_dict, data_time, iter=self.iter)
        else:
            self._write_metrics(loss_dict, data_time)

    @property
    def _data_loader_iter(self) -> Iterator[Any]:
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = iter(self.data_loader)
        return self._data_loader_iter_obj

    def _next_batch(self) -> Any:
        try:
            return next(self._data_loader_iter)
        except StopIteration:
            self._data_loader_iter_obj = iter(self.data_loader)  # a finite loader starts over
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

        Every rank puts ``rank_data_time``; the main process puts ``data_time`` (the max over ranks),
        ``{prefix}total_loss`` (the sum of the rank-averaged losses) and, when there is more than one, each
        averaged loss — all at ``cur_iter`` (default: the storage's iteration), smoothing hint True.

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
        if comm.is_main_process():
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
        self.optimizer.load_state_dict(state_dict["optimizer"])

    def after_train(self) -> None:
        super().after_train()
        self.concurrent_executor.shutdown(wait=True)


def _sum_losses(output: Any, cur_iter: int) -> tuple[Mapping[str, torch.Tensor], torch.Tensor]:
    """detectron2's loss contract: one scalar tensor, or a dict of scalar tensors that are summed."""
    if isinstance(output, torch.Tensor):
        if output.numel() != 1:
            raise TypeError(
                f"in training mode the model must return a scalar loss or a dict of scalar losses; at iteration "
                f"{cur_iter} it returned a tensor of shape {tuple(output.shape)}"
            )
        return {"total_loss": output}, output
    if not isinstance(output, Mapping) or not output:
        raise TypeError(
            f"in training mode the model must return a dict of scalar loss tensors (or one scalar tensor); at "
            f"iteration {cur_iter} it returned {type(output).__qualname__}"
            + (" (empty)" if isinstance(output, Mapping) else "")
        )
    for name, value in output.items():
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__qualname__
            raise TypeError(
                f"in training mode the model must return a dict of scalar loss tensors; at iteration {cur_iter} "
                f"loss {name!r} is {got}"
            )
    return output, sum(output.values())  # type: ignore[return-value]


def _backward(trainer: TrainerBase, loss: torch.Tensor) -> None:
    """``loss.backward()`` then the hooks' ``after_backward`` (through Lightning inside a run)."""
    run = current_run()
    if run is None:
        loss.backward()
        trainer.after_backward()
    else:
        run.backward(loss)


def _identity(loss: torch.Tensor) -> torch.Tensor:
    return loss


def _grad_sync_skipped(model: torch.nn.Module) -> Any:
    """A context in which backwards accumulate gradients locally, without DDP's all-reduce.

    ``no_sync`` of a model wrapped by ``create_ddp_model``, else of the Lightning strategy's DDP wrapper
    (``block_backward_sync``); nothing to skip otherwise (one process, or a strategy without it).
    """
    if isinstance(model, DistributedDataParallel):
        return model.no_sync()
    run = current_run()
    block = getattr(run.pl_trainer.strategy, "block_backward_sync", None) if run is not None else None
    return block() if block is not None else contextlib.nullcontext()


def _optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    run = current_run()
    if run is None:
        optimizer.step()
    else:
        run.optimizer_step(optimizer)


class AMPTrainer(SimpleTrainer):
    """Like :class:`SimpleTrainer`, with automatic mixed precision: autocast forward, scaled backward.

    Runs on CUDA and, unlike detectron2's, on CPU too (``precision=torch.bfloat16`` there). As in detectron2,
    metrics are written synchronously whatever ``async_write_metrics`` says, and the scaler's state is part
    of :meth:`state_dict` (``"grad_scaler"``), required when loading.

    Args:
        model, data_loader, optimizer, gather_metric_period, zero_grad_before_forward, async_write_metrics:
            as :class:`SimpleTrainer`.
        grad_scaler: a ``torch.amp.GradScaler``; by default one for the model's device.
        precision: the autocast dtype, ``torch.float16`` or ``torch.bfloat16``.
        log_grad_scaler: put the scale into the storage as ``[metric]grad_scaler`` every iteration.
        accumulate_grad_batches: micro-batches per iteration, as :class:`SimpleTrainer` (keyword-only); the
            scaler steps and updates once per iteration.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        data_loader: Iterable[Any],
        optimizer: torch.optim.Optimizer,
        gather_metric_period: int = 1,
        zero_grad_before_forward: bool = False,
        grad_scaler: Any = None,
        precision: torch.dtype = torch.float16,
        log_grad_scaler: bool = False,
        async_write_metrics: bool = False,
        *,
        accumulate_grad_batches: int = 1,
    ) -> None:
        if precision not in (torch.float16, torch.bfloat16):
            raise ValueError(f"precision must be torch.float16 or torch.bfloat16, got {precision!r}")
        if isinstance(model, torch.nn.DataParallel):
            raise ValueError("AMPTrainer does not support single-process multi-device training (DataParallel)")
        super().__init__(
            model,
            data_loader,
            optimizer,
            gather_metric_period,
            zero_grad_before_forward,
            accumulate_grad_batches=accumulate_grad_batches,
        )
        param = next(model.parameters(), None)
        self._device_type = param.device.type if param is not None else "cpu"
        self.grad_scaler = grad_scaler if grad_scaler is not None else _default_grad_scaler(self._device_type)
        self.precision = precision
        self.log_grad_scaler = log_grad_scaler

    def run_step(self) -> None:
        """One iteration under autocast, with the backward and the step through the grad scaler."""
        if not self.model.training:
            raise AssertionError("[AMPTrainer] model was changed to eval mode!")
        if self._accumulate_grad_batches > 1:
            loss_dict, data_time = self._run_micro_batches(self._autocast, self.grad_scaler.scale)
        else:
            start = time.perf_counter()
            data = self._next_batch()
            data_time = time.perf_counter() - start

            if self.zero_grad_before_forward:
                self.optimizer.zero_grad()
            with torch.autocast(device_type=self._device_type, dtype=self.precision):
                loss_dict, losses = _sum_losses(self.model(data), self.iter)
            if not self.zero_grad_before_forward:
                self.optimizer.zero_grad()
            _backward(self, self.grad_scaler.scale(losses))
        if self.log_grad_scaler:
            get_event_storage().put_scalar("[metric]grad_scaler", self.grad_scaler.get_scale())
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def _autocast(self) -> Any:
        return torch.autocast(device_type=self._device_type, dtype=self.precision)

    def state_dict(self) -> dict[str, Any]:
        ret = super().state_dict()
        ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "grad_scaler" not in state_dict:
            raise KeyError("AMPTrainer.load_state_dict: the state has no 'grad_scaler' (saved without AMP?)")
        self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def _default_grad_scaler(device_type: str) -> Any:
    try:
        return torch.amp.GradScaler(device_type)
    except (AttributeError, TypeError, RuntimeError):  # torch < 2.3 has no CPU scaler
        return torch.cuda.amp.GradScaler(enabled=device_type == "cuda")

"""detectron2 ``EvalHook``: run an evaluation function periodically and after training; results to the storage.

after_step → ``on_train_batch_end`` (periodic evaluation); after_train → ``on_train_end`` (final evaluation).
Inside a Lightning run the results also reach ``trainer.callback_metrics``, and Lightning's ``EarlyStopping``
and ``ModelCheckpoint(monitor=...)`` react to them as they would after a validation run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from d2lightning.engine.hook_base import HookBase
from d2lightning.engine.hooks._periods import every_n_iters, is_finished, is_last_iter
from d2lightning.engine.lightning import _private
from d2lightning.engine.lightning.run import TrainingRun
from d2lightning.evaluation.testing import flatten_results_dict
from d2lightning.utils import comm
from d2lightning.utils.sharding import gathered_weights
from d2lightning.utils.validation import check_int

__all__ = ["EvalHook"]

logger = logging.getLogger(__name__)


class EvalHook(HookBase):
    """Run ``eval_function`` every ``eval_period`` iterations and after the last one; store the results.

    Evaluates in ``after_step`` when ``eval_period > 0``, ``(iter + 1) % eval_period == 0`` and the iteration
    is not the last, and in ``after_train`` when ``eval_after_train`` is set and training reached its end
    (``iter + 1 >= max_iter``; not after a failure) — so never twice at the end. ``after_train`` then drops the
    function (it is often a closure over the trainer): the hook serves one run, as in detectron2.

    ``eval_function()`` returns a nested dict of numbers, or something falsy for "nothing to report". The
    dict is flattened with "/" (``{"bbox": {"AP": 40.1}}`` → ``bbox/AP``; several datasets give
    ``<dataset>/bbox/AP``), and each value is put into the storage at the current iteration with
    ``smoothing_hint=False``. Every evaluation ends with ``comm.synchronize()`` (a barrier), so the hook must
    be registered on **all ranks**; a rank that should not evaluate passes ``eval_function=lambda: None``.

    In a Lightning run the flat results are also written to the Lightning Trainer's ``callback_metrics``
    (float tensors), standing in for Lightning's validation loop, which a detectron2 run does not use:

    - at setup, ``EarlyStopping`` callbacks are switched to check after validation instead of at epoch end
      (``check_on_train_epoch_end=False``: an iteration-based run has no epochs, its only "epoch end" is the
      end of training), and so are ``ModelCheckpoint(monitor=...)`` callbacks that left
      ``save_on_train_epoch_end`` unset;
    - after each evaluation, every ``EarlyStopping`` and ``ModelCheckpoint`` whose ``monitor`` is among the
      results gets ``on_validation_end``, exactly as after a Lightning validation run, so it checks the
      metric, saves a best checkpoint or sets ``trainer.should_stop``. Lightning then ends training after the
      current iteration; ``after_train`` sees ``max_iter`` lowered to the iterations done and evaluates once
      more — even when the evaluation that stopped the run was at that same iteration: hooks running between
      (``PreciseBN``'s final update, weight swaps) may have changed the model, and detectron2's rule
      "evaluate after the last iteration" is kept. ``EarlyStopping`` is not consulted for this final
      evaluation (training is already over); ``ModelCheckpoint`` is;
    - under DDP, when such callbacks exist, the results of rank 0 (where detectron2's evaluators return them)
      are given to every rank, so all ranks take the same decision.

    Args:
        eval_period: iterations between evaluations; 0 evaluates only after training.
        eval_function: a function without arguments returning a nested dict of floats (or None).
        eval_after_train: evaluate after the last iteration.

    Raises:
        ValueError: when ``eval_period`` is not an int >= 0; when a result value does not convert with
            ``float()``: "[EvalHook] eval_function should return a nested dict of float. Got '{k}: {v}'
            instead.".
        TypeError: when ``eval_function`` is not callable, or returns a truthy non-dict.

    Example::

        hooks.EvalHook(cfg.TEST.EVAL_PERIOD, lambda: trainer.test(cfg, trainer.model))
    """

    def __init__(self, eval_period: int, eval_function: Callable[[], Any], eval_after_train: bool = True) -> None:
        self._period = check_int("EvalHook eval_period", eval_period, minimum=0)
        if not callable(eval_function):
            raise TypeError(f"EvalHook eval_function must be callable, got {eval_function!r}")
        self._func = eval_function
        self._eval_after_train = bool(eval_after_train)

    def after_step(self) -> None:
        # The evaluation after the last iteration happens in after_train.
        if every_n_iters(self.trainer, self._period) and not is_last_iter(self.trainer):
            self._do_eval(final=False)

    def after_train(self) -> None:
        # Not after a failed run: it ends with iter + 1 < max_iter (unless it failed in the last iteration).
        if self._eval_after_train and is_finished(self.trainer):
            self._do_eval(final=True)
        # The function is likely a closure holding the trainer: drop it to break the cycle.
        del self._func

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        run = TrainingRun.of(trainer) if stage == "fit" else None
        if run is not None:  # the monitors act after each evaluation for this fit (undone when it ends)
            for cb in trainer.callbacks:  # type: ignore[attr-defined]
                run.scope.on_close(_private.monitor_after_evaluation(cb))

    def _do_eval(self, final: bool) -> None:
        # a sharded (FSDP) model: every rank gets the full weights first, so that each evaluates its own batches
        with gathered_weights(getattr(self.trainer, "model", None)):
            results = self._func()
        if results:
            if not isinstance(results, Mapping):
                raise TypeError(f"Eval function must return a dict. Got {results} instead.")
            flat = {}
            for k, v in flatten_results_dict(results).items():
                try:
                    flat[k] = float(v)
                except Exception as e:
                    raise ValueError(
                        f"[EvalHook] eval_function should return a nested dict of float. Got '{k}: {v}' instead."
                    ) from e
            self.trainer.storage.put_scalars(**flat, smoothing_hint=False)
        else:
            flat = {}
        _report_to_lightning(self.trainer, flat, final)
        # Evaluation may take a different time on each rank; start the next iteration together.
        comm.synchronize()


def _is_monitor(cb: Callback) -> bool:
    """A Lightning callback that acts on a monitored metric after validation."""
    return isinstance(cb, EarlyStopping) or (isinstance(cb, ModelCheckpoint) and cb.monitor is not None)


def _report_to_lightning(trainer: Any, flat: dict[str, float], final: bool) -> None:
    """Put the results into ``callback_metrics`` and let Lightning's monitoring callbacks react (see EvalHook).

    ``trainer`` is the detectron2-style trainer; its ``pl_trainer`` is the fit it runs in (None outside one).
    """
    pl_trainer = getattr(trainer, "pl_trainer", None)
    if pl_trainer is None or TrainingRun.of(pl_trainer) is None:
        return
    monitors = [cb for cb in pl_trainer.callbacks if _is_monitor(cb)]
    if monitors and comm.get_world_size() > 1:
        flat = comm.all_gather(flat)[0]  # collective: the callback lists, hence `monitors`, agree across ranks
    metrics = pl_trainer.callback_metrics
    for k, v in flat.items():
        metrics[k] = torch.scalar_tensor(v)
    for cb in monitors:
        if cb.monitor not in flat or (final and isinstance(cb, EarlyStopping)):
            continue
        cb.on_validation_end(pl_trainer, pl_trainer.lightning_module)

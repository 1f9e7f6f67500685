"""The running fit's Lightning state, handed to the checkpointers it trains for (no detectron2 counterpart).

While a fit trains a checkpointer's model, the checkpointer's ``training_state`` is a function returning what
``Trainer.save_checkpoint`` would write, so every file it saves is also a ``Trainer.fit(ckpt_path=...)`` file
(:mod:`d2lightning.checkpoint.lightning_state` merges it). The state is gathered on the saving process only, without
any collective, which is right wherever each process holds the full state (single device, DDP); under strategies
that shard it (FSDP, DeepSpeed, a ``ZeroRedundancyOptimizer``) the files keep detectron2's keys only, with a reason.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl

from d2lightning.engine.lightning import _private

if TYPE_CHECKING:
    from d2lightning.engine.lightning.run import TrainingRun

__all__ = ["attach_training_state"]


def attach_training_state(run: TrainingRun, owner: Any) -> list[Any]:
    """Give every d2lightning checkpointer of ``owner`` and its hooks that saves the fitted model the fit's state.

    Returns:
        The checkpointers it was given to (their ``training_state`` goes back to None when the run closes).
    """
    return _attach(run, _checkpointers_of(owner))


def _checkpointers_of(owner: Any) -> list[Any]:
    """The d2lightning checkpointers this run's hooks and trainer save with (those that can hold Lightning state)."""
    found: list[Any] = []
    for holder in [owner, *owner._hooks]:
        checkpointer = getattr(holder, "checkpointer", None)
        checkpointer = getattr(checkpointer, "checkpointer", checkpointer)  # fvcore's PeriodicCheckpointer wraps one
        if hasattr(checkpointer, "training_state") and all(c is not checkpointer for c in found):
            found.append(checkpointer)
    return found


def _attach(run: TrainingRun, checkpointers: list[Any]) -> list[Any]:
    """Let every checkpointer of the fitted model add the fit's full Lightning state to the files it writes."""
    pl_module = run.pl_trainer.lightning_module  # type: ignore[union-attr]
    modules = {id(m) for m in pl_module.modules()}
    attached = []
    for checkpointer in checkpointers:
        if id(checkpointer.model) in modules:
            checkpointer.training_state = _TrainingState(run)
            attached.append(checkpointer)
    return attached


class _TrainingState:
    """What a checkpointer calls to get the running fit's Lightning state (see ``Checkpointer.training_state``)."""

    def __init__(self, run: TrainingRun) -> None:
        self._run = weakref.ref(run)

    def __call__(self) -> dict[str, Any] | str:
        """The state ``Trainer.save_checkpoint`` would write, or why it cannot be given on this process."""
        run = self._run()
        pl_trainer = run.pl_trainer if run is not None else None
        if pl_trainer is None:
            return {}
        strategy = pl_trainer.strategy
        if not _holds_full_state(pl_trainer):
            return (
                f"Checkpoints written under {type(strategy).__name__} hold detectron2's keys only: that strategy "
                "gathers the full Lightning state collectively. Use lightning's ModelCheckpoint for files that "
                "Trainer.fit(ckpt_path=...) can resume from."
            )
        return _private.dump_training_state(pl_trainer)


_PER_PROCESS_METHODS = ("optimizer_state", "lightning_module_state_dict", "save_checkpoint")


def _holds_full_state(pl_trainer: pl.Trainer) -> bool:
    """Whether every process holds the full training state (single device, DDP): no sharded strategy/optimizer."""
    from lightning.pytorch.strategies.strategy import Strategy

    strategy = pl_trainer.strategy
    if any(getattr(type(strategy), name) is not getattr(Strategy, name) for name in _PER_PROCESS_METHODS):
        return False
    return not any(hasattr(opt, "consolidate_state_dict") for opt in pl_trainer.optimizers)

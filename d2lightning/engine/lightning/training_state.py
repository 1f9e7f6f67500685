"""The running fit's Lightning state, handed to the checkpointers it trains for (no detectron2 counterpart).

While a fit trains a checkpointer's model, the checkpointer's ``training_state`` is a function returning what
``Trainer.save_checkpoint`` would write, so every file it saves is also a ``Trainer.fit(ckpt_path=...)`` file
(:mod:`d2lightning.checkpoint.lightning_state` merges it). The state is gathered on the saving process only, without
any collective, which is right wherever each process holds the full state (single device, DDP); under strategies
that shard it (FSDP, DeepSpeed, a ``ZeroRedundancyOptimizer``) the files keep detectron2's keys only, with a reason.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as pl

from d2lightning.checkpoint.discovery import find_checkpointers
from d2lightning.engine.lightning import _private

__all__ = ["attach_training_state"]


def attach_training_state(pl_trainer: pl.Trainer, holders: Iterable[Any]) -> Callable[[], None]:
    """Give every d2lightning checkpointer of ``holders`` (the trainer and its hooks) that saves the fitted model
    the fit's state.

    Returns:
        The undo: the checkpointers' ``training_state`` goes back to None.
    """
    modules = {id(m) for m in pl_trainer.lightning_module.modules()}
    attached = [
        c
        for c in find_checkpointers(holders)
        if hasattr(c, "training_state") and id(getattr(c, "model", None)) in modules
    ]
    state = _TrainingState(pl_trainer)
    for checkpointer in attached:
        checkpointer.training_state = state

    def detach() -> None:
        for checkpointer in attached:
            checkpointer.training_state = None

    return detach


class _TrainingState:
    """What a checkpointer calls to get the running fit's Lightning state (see ``Checkpointer.training_state``)."""

    def __init__(self, pl_trainer: pl.Trainer) -> None:
        self._pl_trainer = weakref.ref(pl_trainer)

    def __call__(self) -> dict[str, Any] | str:
        """The state ``Trainer.save_checkpoint`` would write, or why it cannot be given on this process."""
        pl_trainer = self._pl_trainer()
        if pl_trainer is None:
            return {}
        strategy = pl_trainer.strategy
        if not _holds_full_state(pl_trainer):
            return (
                f"Checkpoints written under {type(strategy).__name__} hold detectron2's keys only (the full model "
                "and optimizer: resume_or_load / --resume continues from them): that strategy gathers Lightning's "
                "own state collectively. Use Lightning's ModelCheckpoint for files that Trainer.fit(ckpt_path=...) "
                "can resume from."
            )
        module = pl_trainer.lightning_module
        one_process = getattr(module, "one_process_dump", None)  # TrainerModule: no collective in its hooks
        with one_process() if callable(one_process) else contextlib.nullcontext():
            return _private.dump_training_state(pl_trainer)


_PER_PROCESS_METHODS = ("optimizer_state", "lightning_module_state_dict", "save_checkpoint")


def _holds_full_state(pl_trainer: pl.Trainer) -> bool:
    """Whether every process holds the full training state (single device, DDP): no sharded strategy/optimizer."""
    from lightning.pytorch.strategies.strategy import Strategy

    strategy = pl_trainer.strategy
    if any(getattr(type(strategy), name) is not getattr(Strategy, name) for name in _PER_PROCESS_METHODS):
        return False
    return not any(hasattr(opt, "consolidate_state_dict") for opt in pl_trainer.optimizers)

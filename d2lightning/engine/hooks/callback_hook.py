"""detectron2 ``CallbackHook``: call plain functions at hook points.

before_train → ``on_train_start``; before_step → ``on_train_batch_start``; after_step →
``on_train_batch_end``; after_train → ``on_train_end`` / ``on_exception``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from d2lightning.engine.hook_base import HookBase

__all__ = ["CallbackHook"]

_Fn = Callable[[Any], Any] | None


class CallbackHook(HookBase):
    """Call each given function with the trainer at its hook point.

    ``after_train`` drops the functions afterwards (they may be closures holding the trainer), so the hook
    cannot be reused for a second run, as in detectron2. There is no ``after_backward`` function.

    Args:
        before_train, after_train, before_step, after_step: functions ``fn(trainer)``, or None.

    Raises:
        TypeError: naming the argument that is neither callable nor None.

    Example::

        hooks.CallbackHook(after_step=lambda trainer: print(trainer.iter))
    """

    def __init__(
        self,
        *,
        before_train: _Fn = None,
        after_train: _Fn = None,
        before_step: _Fn = None,
        after_step: _Fn = None,
    ) -> None:
        for name, fn in (
            ("before_train", before_train),
            ("after_train", after_train),
            ("before_step", before_step),
            ("after_step", after_step),
        ):
            if fn is not None and not callable(fn):
                raise TypeError(f"CallbackHook {name} must be callable or None, got {fn!r}")
        self._before_train = before_train
        self._after_train = after_train
        self._before_step = before_step
        self._after_step = after_step

    def before_train(self) -> None:
        if self._before_train:
            self._before_train(self.trainer)

    def after_train(self) -> None:
        if self._after_train:
            self._after_train(self.trainer)
        # Release closures that may hold the trainer.
        del self._before_train, self._after_train, self._before_step, self._after_step

    def before_step(self) -> None:
        if self._before_step:
            self._before_step(self.trainer)

    def after_step(self) -> None:
        if self._after_step:
            self._after_step(self.trainer)

"""detectron2 ``PeriodicCheckpointer`` hook: fvcore's periodic checkpointer stepped after every iteration.

before_train → ``on_train_start`` (``max_iter`` taken from the trainer); after_step → ``on_train_batch_end``
(``step(trainer.iter)``); after_train → ``on_train_end`` (final file after an early stop only).
"""

from __future__ import annotations

from typing import Any

from d2lightning.checkpoint.periodic_checkpointer import PeriodicCheckpointer as _PeriodicCheckpointer
from d2lightning.engine.hook_base import HookBase

__all__ = ["PeriodicCheckpointer"]


class PeriodicCheckpointer(_PeriodicCheckpointer, HookBase):
    """Save ``{file_prefix}_{iter:07d}.pth`` every ``period`` iterations and ``{file_prefix}_final.pth`` at the end.

    Same as :class:`d2lightning.checkpoint.PeriodicCheckpointer`, as a hook: after each iteration ``i`` it calls
    ``step(i)``, so it saves when ``(i + 1) % period == 0`` and after the last iteration (``max_iter`` is the
    trainer's, whatever the constructor got). It saves only what its checkpointer holds, plus ``iteration``.
    Register it after ``LRScheduler`` so the saved scheduler state is the one after the step.

    After a crash nothing more is saved, as in detectron2. Unlike detectron2 (which has no clean stop), when
    Lightning stops training early (``trainer.should_stop``, e.g. ``EarlyStopping``) the last iteration done is
    saved as ``{file_prefix}_final`` in ``after_train``, with the trainer state of that iteration.

    Registered on the main process only, as detectron2's scripts register it, its files still hold every rank's RNG
    states and data-stream positions: with several processes the fit's run gathers them on every rank at the
    iterations where this hook saves.

    Args:
        checkpointer: the checkpointer, e.g. ``DetectionCheckpointer(model, output_dir, trainer=trainer)``.
        period: iterations between saves (>= 1).
        max_iter: ignored when training starts (the trainer's ``max_iter`` is used); kept for detectron2's
            signature.
        max_to_keep: keep only this many periodic files written by this hook (``*_final.pth`` is never
            deleted, files of earlier runs are not counted); None keeps all.
        file_prefix: the file name prefix.

    Raises:
        ValueError, TypeError: as :class:`d2lightning.checkpoint.PeriodicCheckpointer` (``period`` must be >= 1;
            detectron2 raises ``ZeroDivisionError`` at the first step for 0).

    Example::

        checkpointer = DetectionCheckpointer(model, "output", optimizer=optimizer, trainer=trainer)
        trainer.register_hooks([hooks.LRScheduler(), hooks.PeriodicCheckpointer(checkpointer, 5000)])
    """

    _final_saved = False

    def __init__(
        self,
        checkpointer: Any,
        period: int,
        max_iter: int | None = None,
        max_to_keep: int | None = None,
        file_prefix: str = "model",
    ) -> None:
        super().__init__(checkpointer, period, max_iter, max_to_keep, file_prefix)

    def before_train(self) -> None:
        self.max_iter = self.trainer.max_iter
        self._final_saved = False

    def after_step(self) -> None:
        self.step(self.trainer.iter)

    def after_train(self) -> None:
        trainer = self.trainer
        # iter == max_iter only when training ended without an exception; max_iter was lowered by an early stop
        if self._final_saved or trainer.iter != trainer.max_iter or trainer.iter <= trainer.start_iter:
            return
        last = trainer.iter - 1
        trainer.iter = last  # the trainer's own state, as after_step of its last iteration would save it
        try:
            self._save_final(iteration=last)
        finally:
            trainer.iter = last + 1

    def _save_final(self, **kwargs: Any) -> None:
        self._final_saved = True
        super()._save_final(**kwargs)

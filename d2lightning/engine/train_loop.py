"""detectron2's ``engine/train_loop.py``: ``HookBase``, ``TrainerBase``, ``SimpleTrainer``, ``AMPTrainer``.

Same names, signatures, attributes and semantics as detectron2. The loop is detectron2's::

    with EventStorage(start_iter) as trainer.storage:
        try:
            trainer.before_train()                  # hook.before_train() for every hook, in order
            for trainer.iter in range(start_iter, max_iter):
                trainer.before_step()               # hook.before_step()
                trainer.run_step()                  # fetch, forward, backward, hook.after_backward(), step
                trainer.after_step()                # hook.after_step()
            trainer.iter += 1
        finally:
            trainer.after_train()                   # hook.after_train()

with one difference underneath: ``TrainerBase.train(start_iter, max_iter)`` runs it on a
``lightning.pytorch.Trainer``. ``run_step`` is the ``training_step`` of a LightningModule in Lightning's manual
optimization (:mod:`~d2lightning.engine.lightning.trainer_module`), every hook is a Lightning ``Callback``
(:mod:`~d2lightning.engine.hook_base`) that Lightning calls at each step in list order, and a
:class:`~d2lightning.engine.lightning.run.TrainingRun`, first among the callbacks, plays the rest of the loop
around them.

Each class lives in its own module (``hook_base``, ``trainer_base``, ``simple_trainer``, ``amp_trainer``); this
module gathers them under detectron2's import path.
"""

from d2lightning.engine.amp_trainer import AMPTrainer
from d2lightning.engine.hook_base import HookBase
from d2lightning.engine.simple_trainer import SimpleTrainer
from d2lightning.engine.trainer_base import TrainerBase

__all__ = ["AMPTrainer", "HookBase", "SimpleTrainer", "TrainerBase"]

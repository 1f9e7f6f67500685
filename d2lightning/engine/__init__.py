"""detectron2's ``engine`` on PyTorch Lightning: ``from d2lightning.engine import SimpleTrainer, hooks``."""

from d2lightning.engine import hooks
from d2lightning.engine.adapter import HookCallback
from d2lightning.engine.defaults import default_argument_parser
from d2lightning.engine.module import D2LightningModule
from d2lightning.engine.train_loop import AMPTrainer, HookBase, SimpleTrainer, TrainerBase

__all__ = [
    "AMPTrainer",
    "D2LightningModule",
    "HookBase",
    "HookCallback",
    "SimpleTrainer",
    "TrainerBase",
    "default_argument_parser",
    "hooks",
]

"""detectron2's ``engine`` on PyTorch Lightning: ``from d2lightning.engine import SimpleTrainer, hooks``."""

from d2lightning.engine import hooks, train_loop
from d2lightning.engine.amp_trainer import AMPTrainer
from d2lightning.engine.defaults import default_argument_parser, default_setup, default_writers
from d2lightning.engine.distributed.ddp import create_ddp_model
from d2lightning.engine.distributed.fsdp import FSDPSharding
from d2lightning.engine.hook_base import HookBase, HookCallback
from d2lightning.engine.hooks import (  # detectron2.engine re-exports its hooks too
    AutogradProfiler,
    BestCheckpointer,
    CallbackHook,
    EvalHook,
    IterationTimer,
    LRScheduler,
    PeriodicCheckpointer,
    PeriodicWriter,
    PreciseBN,
    TorchMemoryStats,
    TorchProfiler,
)
from d2lightning.engine.launch import DEFAULT_TIMEOUT, launch
from d2lightning.engine.module import D2LightningModule
from d2lightning.engine.recipes.default_trainer import DefaultTrainer
from d2lightning.engine.recipes.predictor import DefaultPredictor
from d2lightning.engine.simple_trainer import SimpleTrainer
from d2lightning.engine.trainer_base import TrainerBase

__all__ = [
    "DEFAULT_TIMEOUT",
    "AMPTrainer",
    "AutogradProfiler",
    "BestCheckpointer",
    "CallbackHook",
    "D2LightningModule",
    "DefaultPredictor",
    "DefaultTrainer",
    "EvalHook",
    "FSDPSharding",
    "HookBase",
    "HookCallback",
    "IterationTimer",
    "LRScheduler",
    "PeriodicCheckpointer",
    "PeriodicWriter",
    "PreciseBN",
    "SimpleTrainer",
    "TorchMemoryStats",
    "TorchProfiler",
    "TrainerBase",
    "create_ddp_model",
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "hooks",
    "launch",
    "train_loop",
]

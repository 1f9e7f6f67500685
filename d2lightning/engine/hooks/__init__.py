"""detectron2's ``engine.hooks``: every hook is a ``HookBase`` and therefore a Lightning ``Callback``."""

from d2lightning.engine.hook_base import HookBase
from d2lightning.engine.hooks.best_checkpointer import BestCheckpointer
from d2lightning.engine.hooks.callback_hook import CallbackHook
from d2lightning.engine.hooks.ema import EMA
from d2lightning.engine.hooks.eval_hook import EvalHook
from d2lightning.engine.hooks.iteration_timer import IterationTimer
from d2lightning.engine.hooks.lr_scheduler import LRScheduler
from d2lightning.engine.hooks.periodic_checkpointer import PeriodicCheckpointer
from d2lightning.engine.hooks.periodic_writer import PeriodicWriter
from d2lightning.engine.hooks.precise_bn import PreciseBN
from d2lightning.engine.hooks.profiler import AutogradProfiler, TorchProfiler
from d2lightning.engine.hooks.torch_memory_stats import TorchMemoryStats

__all__ = [
    "EMA",
    "AutogradProfiler",
    "BestCheckpointer",
    "CallbackHook",
    "EvalHook",
    "HookBase",
    "IterationTimer",
    "LRScheduler",
    "PeriodicCheckpointer",
    "PeriodicWriter",
    "PreciseBN",
    "TorchMemoryStats",
    "TorchProfiler",
]

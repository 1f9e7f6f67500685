"""How ``TrainerBase.train`` builds the ``lightning.pytorch.Trainer`` it runs on.

The defaults reproduce detectron2's loop and nothing more: iteration-based (``max_steps``, no epochs), no sanity
validation, no Lightning checkpointing, logger, progress bar or model summary (detectron2's hooks and writers do
those jobs; checkpointing is switched on when a Lightning ``Checkpoint`` callback is registered), no distributed
sampler (detectron2 loaders shard themselves), a profiler that records nothing at no cost, and the device the model
already lives on. Inside a process started by ``launch``, ``srun`` or ``torchrun``, the Trainer joins that run with
DDP. ``trainer.lightning_kwargs`` overrides any of them (loggers, precision, strategy, profiler, plugins...): that
is also how a caller hands cluster support in.

Inside a Slurm job, Lightning's own auto-requeue (which checkpoints inside its signal handler) is switched off; the
preemption hook that checkpoints at an iteration boundary and requeues (``d2lightning.slurm.SlurmPreemption``) is
registered by the caller — ``DefaultTrainer`` and the CLI do — and a run without one says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.profilers import Profiler
from lightning.pytorch.strategies import DDPStrategy
from torch.nn.parallel import DistributedDataParallel

from d2lightning.engine.distributed.cluster import detect_cluster_environment, lightning_cluster_environment
from d2lightning.engine.lightning import _private
from d2lightning.utils import comm

if TYPE_CHECKING:
    from d2lightning.engine.train_loop import TrainerBase

__all__ = ["build_lightning_trainer", "default_trainer_kwargs"]

logger = logging.getLogger(__name__)

_OWNED_BY_TRAIN = ("max_steps", "callbacks")


def default_trainer_kwargs(trainer: TrainerBase) -> dict[str, Any]:
    """The ``lightning.pytorch.Trainer`` arguments ``train()`` uses unless ``lightning_kwargs`` says otherwise."""
    kwargs: dict[str, Any] = {
        "max_epochs": -1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "use_distributed_sampler": False,
        "profiler": _NoProfiler(),
    }
    kwargs.update(_device_kwargs(getattr(trainer, "model", None)))
    return kwargs


def build_lightning_trainer(trainer: TrainerBase, start_iter: int, max_iter: int) -> pl.Trainer:
    """A Lightning Trainer that runs ``trainer``'s iterations ``start_iter .. max_iter - 1`` with its hooks.

    The callbacks are the registered hooks, in their order (the fit's run goes first when the fit starts).

    Raises:
        ValueError: when ``trainer.lightning_kwargs`` sets ``max_steps`` or ``callbacks`` (they come from
            ``train(start_iter, max_iter)`` and ``register_hooks``).
    """
    user = dict(trainer.lightning_kwargs)
    for key in _OWNED_BY_TRAIN:
        if key in user:
            source = "train(start_iter, max_iter)" if key == "max_steps" else "register_hooks([...])"
            raise ValueError(f"lightning_kwargs[{key!r}] is not allowed: it comes from {source}")
    kwargs = default_trainer_kwargs(trainer)
    kwargs.update(user)
    kwargs["max_steps"] = max_iter
    kwargs["callbacks"] = trainer.hook_callbacks()
    _inside_slurm(kwargs)
    if "enable_checkpointing" not in user and any(isinstance(cb, Checkpoint) for cb in kwargs["callbacks"]):
        kwargs["enable_checkpointing"] = True
    pl_trainer = pl.Trainer(**kwargs)
    _private.start_at_iteration(pl_trainer, start_iter)
    return pl_trainer


_NULL = contextlib.nullcontext()  # one shared, reusable null context


def _inside_slurm(kwargs: dict[str, Any]) -> None:
    """Lightning's auto-requeue off under ``srun``; a warning when nothing handles Slurm's signals."""
    from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment

    plugins = kwargs.get("plugins")
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if SLURMEnvironment.detect() and not any(isinstance(p, ClusterEnvironment) for p in plugins):
        kwargs["plugins"] = [*plugins, SLURMEnvironment(auto_requeue=False)]
    job = os.environ.get("SLURM_JOB_ID")
    if (
        job
        and comm.is_main_process()
        and not any(getattr(cb, "handles_preemption", False) for cb in kwargs["callbacks"])
    ):
        logger.warning(
            f"Training inside Slurm job {job} without a preemption hook: SIGUSR1/SIGTERM end it without a checkpoint. "
            "register d2lightning.slurm.SlurmPreemption(checkpointer) to checkpoint, requeue and resume exactly "
            "(DefaultTrainer and the d2lightning CLI do)"
        )


class _NoProfiler(Profiler):
    """Lightning's ``PassThroughProfiler`` without its cost: ``profile()`` hands back one shared null context.

    Lightning opens a profiling context around every callback and module hook it calls, dozens per iteration;
    the pass-through profiler builds a generator-based context manager for each.
    """

    def start(self, action_name: str) -> None:
        pass

    def stop(self, action_name: str) -> None:
        pass

    def profile(self, action_name: str) -> Any:
        return _NULL


def _device_kwargs(model: Any) -> dict[str, Any]:
    """Keep the model where the user put it (detectron2 never moves it); join a launched process group."""
    param = None
    if isinstance(model, torch.nn.Module):
        param = next(model.parameters(), None)
    accelerator = "gpu" if param is not None and param.device.type == "cuda" else "cpu"
    env = detect_cluster_environment()
    world = comm.get_world_size()
    if env is not None and env.world_size > 1:
        devices, num_nodes = env.devices, env.num_nodes
    elif world > 1:  # a process group made by hand, without a launcher's variables: one machine
        devices, num_nodes = world, 1
    elif accelerator == "gpu":
        return {"accelerator": "gpu", "devices": [param.device.index or 0]}  # type: ignore[union-attr]
    else:
        return {"accelerator": "cpu", "devices": 1}
    # detectron2's DefaultTrainer wraps with broadcast_buffers=False; a model the user already wrapped with
    # create_ddp_model keeps its own DDP and Lightning must not wrap it a second time.
    strategy: DDPStrategy = (
        _AlreadyWrappedDDPStrategy()
        if isinstance(model, DistributedDataParallel)
        else DDPStrategy(broadcast_buffers=False)
    )
    kwargs: dict[str, Any] = {
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": num_nodes,
        "strategy": strategy,
    }
    plugin = lightning_cluster_environment()
    if plugin is not None:
        kwargs["plugins"] = [plugin]
    return kwargs


class _AlreadyWrappedDDPStrategy(DDPStrategy):
    """DDP for a model that ``create_ddp_model`` already wrapped: Lightning sets up the group, never re-wraps."""

    def configure_ddp(self) -> None:
        pass

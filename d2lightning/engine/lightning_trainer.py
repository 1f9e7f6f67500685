"""How ``TrainerBase.train`` builds the ``lightning.pytorch.Trainer`` it runs on.

The defaults reproduce detectron2's loop and nothing more: iteration-based (``max_steps``, no epochs), no
sanity validation, no Lightning checkpointing, logger, progress bar or model summary (detectron2's hooks and
writers do those jobs), no distributed sampler (detectron2 loaders shard themselves), and the device the model
already lives on. ``trainer.lightning_kwargs`` overrides any of them (loggers, precision, strategy...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch

from d2lightning.engine.adapter import as_callback, set_global_step
from d2lightning.utils import comm

if TYPE_CHECKING:
    from d2lightning.engine.train_loop import TrainerBase

__all__ = ["build_lightning_trainer", "default_trainer_kwargs"]

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
    }
    kwargs.update(_device_kwargs(getattr(trainer, "model", None)))
    return kwargs


def _device_kwargs(model: Any) -> dict[str, Any]:
    """Keep the model where the user put it, as detectron2 does (it never moves the model)."""
    param = None
    if isinstance(model, torch.nn.Module):
        param = next(model.parameters(), None)
    world = comm.get_world_size()
    if world > 1:
        local = comm.get_local_size()
        accelerator = "gpu" if param is not None and param.device.type == "cuda" else "cpu"
        return {"accelerator": accelerator, "devices": local, "num_nodes": world // local, "strategy": "ddp"}
    if param is not None and param.device.type == "cuda":
        return {"accelerator": "gpu", "devices": [param.device.index or 0]}
    return {"accelerator": "cpu", "devices": 1}


def build_lightning_trainer(trainer: TrainerBase, start_iter: int, max_iter: int) -> pl.Trainer:
    """A Lightning Trainer that runs ``trainer``'s iterations ``start_iter .. max_iter - 1`` with its hooks.

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
    kwargs["callbacks"] = [as_callback(h) for h in trainer._hooks]
    pl_trainer = pl.Trainer(**kwargs)
    set_global_step(pl_trainer, start_iter)
    return pl_trainer

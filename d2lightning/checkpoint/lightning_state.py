"""Lightning's full training state inside detectron2-layout checkpoint files.

A checkpoint saved while a Lightning fit is training the checkpointer's model gets, next to detectron2's keys
(``"model"``, one per checkpointable, ``"iteration"``...), the dictionary Lightning itself would write
(``dump_checkpoint``: ``state_dict``, ``loops``, ``callbacks``, ``optimizer_states``, ``lr_schedulers``,
precision-plugin state, ``global_step``...), plus a marker ``"d2lightning": {"lightning_keys": [...]}`` naming
the keys that are Lightning's. The same ``model_0000009.pth`` is then both a detectron2 checkpoint (its loaders
ignore unknown keys; ours also drop the marked ones) and a ``Trainer.fit(ckpt_path=...)`` file. Tensors shared
by both halves (weights, optimizer state) are stored once by ``torch.save``.

The state is gathered on the saving process only, without any collective, which is correct wherever each
process holds the full state (single device, DDP) — detectron2 saves on the main process only, and so do we.
Under strategies that shard or gather state collectively (FSDP, DeepSpeed, XLA, a ``ZeroRedundancyOptimizer``)
gathering on one rank would hang, so the Lightning half is left out there with a warning; use Lightning's
``ModelCheckpoint`` for those. (A user callback whose ``state_dict``/``on_save_checkpoint`` runs a collective
would hang here too.)
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies.strategy import Strategy
from torch import nn

__all__ = [
    "MARKER_KEY",
    "add_lightning_state",
    "from_lightning_checkpoint",
    "is_lightning_checkpoint",
    "pop_lightning_state",
]

#: Top-level key naming the Lightning keys of a combined file.
MARKER_KEY = "d2lightning"
_PER_PROCESS_METHODS = ("optimizer_state", "lightning_module_state_dict", "save_checkpoint")


def add_lightning_state(data: dict[str, Any], model: nn.Module) -> str | None:
    """Add the running Lightning fit's full state to ``data`` when that fit trains ``model``.

    Nothing is added outside a Lightning fit or when ``model`` is not part of the fitted LightningModule.
    Nothing is added either, and the reason is returned for the caller to warn about, under a strategy that
    gathers state collectively or when a Lightning key is already used in ``data`` (a checkpointable named
    ``"loops"``, say: detectron2's keys win).

    Returns:
        None, or why the Lightning state was left out.
    """
    from d2lightning.engine.adapter import current_run

    run = current_run()
    if run is None or not any(m is model for m in run.pl_module.modules()):
        return None
    pl_trainer = run.pl_trainer
    if not _gathers_state_per_process(pl_trainer):
        return (
            f"Checkpoints written under {type(pl_trainer.strategy).__name__} hold detectron2's keys only: that "
            "strategy gathers the full Lightning state collectively. Use lightning's ModelCheckpoint for files "
            "that Trainer.fit(ckpt_path=...) can resume from."
        )
    state = pl_trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
    clash = sorted(set(state) & (set(data) | {MARKER_KEY}))
    if clash:
        return (
            f"Checkpoint keys {clash} are used both by this checkpointer and by Lightning's state; the files "
            "keep detectron2's and leave Lightning's state out. Rename the checkpointables to keep both."
        )
    data.update(state)
    data[MARKER_KEY] = {"lightning_keys": sorted(state)}
    return None


def pop_lightning_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Remove the marked Lightning keys (and the marker) from ``checkpoint``; return them."""
    marker = checkpoint.pop(MARKER_KEY, None)
    if not isinstance(marker, dict):
        return {}
    return {k: checkpoint.pop(k) for k in marker.get("lightning_keys", ()) if k in checkpoint}


def is_lightning_checkpoint(checkpoint: Any) -> bool:
    """Whether ``checkpoint`` is a plain Lightning checkpoint (``.ckpt``) without detectron2's keys."""
    return (
        isinstance(checkpoint, dict)
        and "model" not in checkpoint
        and "state_dict" in checkpoint
        and "pytorch-lightning_version" in checkpoint
    )


def from_lightning_checkpoint(checkpoint: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """detectron2's view of a Lightning checkpoint: ``{"model": weights, "iteration": global_step - 1}``.

    The LightningModule's keys carry the attribute the model lives under (``model.`` for a
    ``D2LightningModule``); the prefix is removed when that makes the keys match ``model``'s.
    """
    weights = dict(checkpoint["state_dict"])
    own = set(model.state_dict())
    if not own & set(weights):
        for prefix in _prefixes(weights):
            stripped = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
            if own & set(stripped):
                weights = stripped
                break
    out: dict[str, Any] = {"model": weights}
    if isinstance(checkpoint.get("global_step"), int):
        out["iteration"] = checkpoint["global_step"] - 1
    return out


def _prefixes(weights: dict[str, Any]) -> list[str]:
    """Candidate module prefixes (``model.``, ``model.backbone.``...), shortest first."""
    found = {k[: i + 1] for k in weights for i, c in enumerate(k) if c == "."}
    return sorted(found, key=len)


def _gathers_state_per_process(pl_trainer: Any) -> bool:
    strategy = pl_trainer.strategy
    if any(getattr(type(strategy), name) is not getattr(Strategy, name) for name in _PER_PROCESS_METHODS):
        return False
    return not any(hasattr(opt, "consolidate_state_dict") for opt in pl_trainer.optimizers)

"""Lightning's full training state inside detectron2-layout checkpoint files.

A checkpoint saved while a Lightning fit is training the checkpointer's model gets, next to detectron2's keys
(``"model"``, one per checkpointable, ``"iteration"``...), the dictionary Lightning itself would write
(``state_dict``, ``loops``, ``callbacks``, ``optimizer_states``, ``lr_schedulers``, precision-plugin state,
``global_step``...), plus a marker ``"d2lightning": {"lightning_keys": [...]}`` naming the keys that are
Lightning's. The same ``model_0000009.pth`` is then both a detectron2 checkpoint (its loaders ignore unknown keys;
ours also drop the marked ones) and a ``Trainer.fit(ckpt_path=...)`` file. Tensors shared by both halves (weights,
optimizer state) are stored once by ``torch.save``.

The fit hands the state in: while it trains a checkpointer's model, the engine sets the checkpointer's
``training_state`` to a function returning it (gathered on the saving process only, without any collective, which
is correct wherever each process holds the full state: single device, DDP). This module only merges and splits.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

__all__ = [
    "MARKER_KEY",
    "from_lightning_checkpoint",
    "holds_lightning_state",
    "is_lightning_checkpoint",
    "merge_lightning_state",
    "pop_lightning_state",
]

#: Top-level key naming the Lightning keys of a combined file.
MARKER_KEY = "d2lightning"


def merge_lightning_state(data: dict[str, Any], state: dict[str, Any]) -> str | None:
    """Add Lightning's ``state`` to the checkpoint ``data``, with the marker naming its keys.

    Nothing is added, and the reason is returned for the caller to warn about, when a Lightning key is already
    used in ``data`` (a checkpointable named ``"loops"``, say: detectron2's keys win).

    Returns:
        None, or why the Lightning state was left out.
    """
    clash = sorted(set(state) & (set(data) | {MARKER_KEY}))
    if clash:
        return (
            f"Checkpoint keys {clash} are used both by this checkpointer and by Lightning's state; the files "
            "keep detectron2's and leave Lightning's state out. Rename the checkpointables to keep both."
        )
    data.update(state)
    data[MARKER_KEY] = {"lightning_keys": sorted(state)}
    return None


def holds_lightning_state(path: str | os.PathLike[str]) -> bool:
    """Whether the checkpoint file ``path`` carries Lightning's state (readable, with the marker); never raises."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False
    return isinstance(checkpoint, dict) and isinstance(checkpoint.get(MARKER_KEY), dict)


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

"""detectron2's ``DetectionCheckpointer``: the :class:`Checkpointer` detectron2's trainers and predictors use.

Reads, besides d2lightning/detectron2 ``.pth`` checkpoints: raw state dicts (a file without ``"model"``), plain
Lightning checkpoints (``.ckpt``: the LightningModule's weights under the model's attribute, e.g. ``model.``),
and detectron2 model-zoo ``.pkl`` files (``{"model": ..., "__author__": ...}``, loaded by exact names).
Files that need detectron2's name-matching heuristics — Caffe2/Detectron1 ``.pkl``, pycls ``.pyth``,
``?matching_heuristics=True`` — are refused with a ``ValueError`` saying so: convert them with detectron2 first.
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any
from urllib.parse import parse_qs, urlparse

import torch
from torch import nn

from d2lightning.checkpoint.checkpointer import Checkpointer, CorruptCheckpointError
from d2lightning.checkpoint.lightning_state import from_lightning_checkpoint, is_lightning_checkpoint
from d2lightning.checkpoint.model_loading import IncompatibleKeys
from d2lightning.utils import comm

__all__ = ["DetectionCheckpointer"]

_NOT_IN_OLD_CHECKPOINTS = ("pixel_mean", "pixel_std")


class DetectionCheckpointer(Checkpointer):
    """A :class:`Checkpointer` that saves on the main process by default and reads more formats.

    Mirrors detectron2's ``DetectionCheckpointer``: ``save_to_disk`` defaults to ``comm.is_main_process()``;
    missing ``pixel_mean``/``pixel_std`` and unexpected ``anchor_generator.cell_anchors`` keys are not
    reported (old checkpoints lack the former and have the latter). ``http(s)://`` paths are downloaded
    into torch hub's cache. Loading involves no collective: every process reads the file itself (detectron2's
    check that all ranks can read it only applies to a DDP-wrapped model, which its constructor unwraps).

    Args:
        model: the model; a DDP/DataParallel wrapper is unwrapped.
        save_dir: the directory of the checkpoints.
        save_to_disk: whether this process writes files; default: only the main process does.
        **checkpointables: other objects with ``state_dict``/``load_state_dict`` (optimizer, scheduler,
            trainer...).

    Example::

        checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, optimizer=optimizer, trainer=trainer)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
    """

    def __init__(
        self, model: nn.Module, save_dir: str = "", *, save_to_disk: bool | None = None, **checkpointables: Any
    ) -> None:
        super().__init__(
            model,
            save_dir,
            save_to_disk=comm.is_main_process() if save_to_disk is None else save_to_disk,
            **checkpointables,
        )

    def load(self, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Like :meth:`Checkpointer.load`, for the formats in the module docstring.

        Raises:
            ValueError: for a format that needs name-matching heuristics, or an unknown URL query.
        """
        logging.getLogger(__name__).info(f"[DetectionCheckpointer] Loading from {path} ...")
        if path:
            path = self._local_path(path)
        return super().load(path, *args, **kwargs)

    def _local_path(self, path: str) -> str:
        parsed = urlparse(path)
        queries = parse_qs(parsed.query)
        if queries.pop("matching_heuristics", ["False"]) == ["True"]:
            raise ValueError(
                f"{path}: matching_heuristics (detectron2's name-matching weight conversion) is not supported by "
                "d2lightning; convert the weights with detectron2 and load the resulting .pth"
            )
        if queries:
            raise ValueError(f"Unsupported query remaining: {queries}, original filename: {path}")
        path = parsed._replace(query="").geturl()
        if parsed.scheme in ("http", "https"):
            cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(parsed.path))
            if not os.path.isfile(cached):
                os.makedirs(os.path.dirname(cached), exist_ok=True)
                torch.hub.download_url_to_file(path, cached)
            return cached
        return path

    def _load_file(self, filename: str) -> dict[str, Any]:
        if filename.endswith(".pkl"):
            return _load_pkl(filename)
        if filename.endswith(".pyth"):
            raise ValueError(
                f"{filename}: pycls .pyth checkpoints need detectron2's name-matching heuristics, which "
                "d2lightning does not implement; convert the weights with detectron2 first"
            )
        loaded = super()._load_file(filename)
        if is_lightning_checkpoint(loaded):
            return from_lightning_checkpoint(loaded, self.model)
        if "model" not in loaded:
            loaded = {"model": loaded}
        return loaded

    def _load_model(self, checkpoint: dict[str, Any]) -> IncompatibleKeys:
        incompatible = super()._load_model(checkpoint)
        buffers = dict(self.model.named_buffers(recurse=False))
        missing = [k for k in incompatible.missing_keys if not (k in _NOT_IN_OLD_CHECKPOINTS and k in buffers)]
        unexpected = [k for k in incompatible.unexpected_keys if "anchor_generator.cell_anchors" not in k]
        return IncompatibleKeys(missing, unexpected, incompatible.incorrect_shapes)


def _load_pkl(filename: str) -> dict[str, Any]:
    """A detectron2 model-zoo pickle (unpickled like detectron2 does: trusted files only)."""
    try:
        with open(filename, "rb") as f:
            data = pickle.load(f, encoding="latin1")
    except Exception as e:  # a damaged pickle can fail anywhere
        raise CorruptCheckpointError(f"Checkpoint {filename} is truncated or corrupt: {e}") from e
    if isinstance(data, dict) and data.get("matching_heuristics"):
        raise ValueError(f"{filename} asks for matching_heuristics, which d2lightning does not implement")
    if isinstance(data, dict) and "model" in data and "__author__" in data:
        logging.getLogger(__name__).info(f"Reading a file from '{data['__author__']}'")
        return data
    raise ValueError(
        f"{filename} is a Caffe2/Detectron1 .pkl (no 'model' and '__author__' entries); loading it needs "
        "detectron2's name-matching heuristics, which d2lightning does not implement. Convert it with detectron2."
    )

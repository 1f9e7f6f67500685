"""The config's ``LIGHTNING`` section, turned into ``lightning.pytorch.Trainer`` arguments and callbacks.

``LIGHTNING.PRECISION``, ``LOG_EVERY_N_STEPS``, ``DETERMINISTIC`` and, when not ``"auto"``, ``ACCELERATOR``,
``DEVICES``, ``NUM_NODES`` and ``STRATEGY`` become Trainer arguments; ``LOGGERS`` are instantiated (from class
paths) as the Trainer's loggers; ``CALLBACKS`` and, with ``PROGRESS_BAR``, an :class:`IterationProgressBar`
become Lightning callbacks registered after the hooks. A config without a ``LIGHTNING`` section (e.g. a
detectron2 ``CfgNode``) gives detectron2's behaviour.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

__all__ = ["instantiate_class_entry", "lightning_callbacks_from_cfg", "lightning_kwargs_from_cfg"]


def _section(cfg: Any) -> Any:
    return cfg.get("LIGHTNING") if isinstance(cfg, Mapping) else getattr(cfg, "LIGHTNING", None)


def lightning_kwargs_from_cfg(cfg: Any) -> dict[str, Any]:
    """Trainer arguments from ``cfg.LIGHTNING`` (``{}`` without that section).

    Raises:
        ValueError: naming the key, for a logger that cannot be built, or for a setting d2lightning does not
            support yet.
    """
    section = _section(cfg)
    if section is None:
        return {}
    if section.ACCUMULATE_GRAD_BATCHES != 1:
        raise ValueError("LIGHTNING.ACCUMULATE_GRAD_BATCHES != 1 is not supported yet by DefaultTrainer")
    if section.EMA.ENABLED:
        raise ValueError("LIGHTNING.EMA.ENABLED is not supported yet by DefaultTrainer")
    kwargs: dict[str, Any] = {
        "precision": section.PRECISION,
        "log_every_n_steps": section.LOG_EVERY_N_STEPS,
        "deterministic": section.DETERMINISTIC,
        "enable_progress_bar": bool(section.PROGRESS_BAR),
    }
    for key, arg in (("ACCELERATOR", "accelerator"), ("DEVICES", "devices"), ("STRATEGY", "strategy")):
        if section[key] != "auto":
            kwargs[arg] = section[key]
    if section.NUM_NODES != 1:
        kwargs["num_nodes"] = section.NUM_NODES
    loggers = [instantiate_class_entry(e, f"LIGHTNING.LOGGERS[{i}]", cfg) for i, e in enumerate(section.LOGGERS)]
    if loggers:
        kwargs["logger"] = loggers
    return kwargs


def lightning_callbacks_from_cfg(cfg: Any) -> list[Any]:
    """Lightning callbacks from ``cfg.LIGHTNING.CALLBACKS`` (and the progress bar), in config order."""
    from d2lightning.engine.progress import IterationProgressBar

    section = _section(cfg)
    if section is None:
        return []
    callbacks = [instantiate_class_entry(e, f"LIGHTNING.CALLBACKS[{i}]", cfg) for i, e in enumerate(section.CALLBACKS)]
    if section.PROGRESS_BAR:
        callbacks.append(IterationProgressBar())
    return callbacks


def instantiate_class_entry(entry: Any, key: str, cfg: Any = None) -> Any:
    """Build ``"pkg.mod.Class"`` or ``{"class_path": ..., "init_args": {...}}``.

    A class whose constructor takes ``save_dir`` gets ``cfg.OUTPUT_DIR`` unless ``init_args`` sets it (so
    ``lightning.pytorch.loggers.CSVLogger`` writes next to detectron2's files).

    Raises:
        ValueError: naming ``key`` when the class path does not import or the object cannot be built.
    """
    if isinstance(entry, str):
        class_path, init_args = entry, {}
    else:
        class_path, init_args = entry["class_path"], dict(entry.get("init_args") or {})
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"{key}: cannot import {class_path!r}: {e}") from e
    output_dir = getattr(cfg, "OUTPUT_DIR", None) if cfg is not None else None
    if output_dir and "save_dir" not in init_args:
        try:
            if "save_dir" in inspect.signature(cls).parameters:
                init_args["save_dir"] = output_dir
        except (TypeError, ValueError):
            pass
    try:
        return cls(**init_args)
    except Exception as e:
        raise ValueError(f"{key}: {class_path}(**{init_args}) failed: {type(e).__name__}: {e}") from e

"""Read a config key with a fallback, from a yacs/omegaconf/dict config (private helper).

Transitional: once ``d2lightning.config`` ships defaults for every key used by ``data`` and ``modeling``,
callers can use attribute access directly; this helper keeps them working on partial configs until then.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["cfg_get"]

_MISSING = object()


def cfg_get(cfg: Any, key: str, default: Any = _MISSING) -> Any:
    """Value of dotted ``key`` (e.g. ``"MODEL.PIXEL_MEAN"``) in ``cfg``, or ``default`` when absent.

    Raises:
        KeyError: when the key is absent and no default was given.
    """
    node = cfg
    for part in key.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif not isinstance(node, Mapping) and hasattr(node, part):
            node = getattr(node, part)
        elif default is _MISSING:
            raise KeyError(f"config key {key!r} is missing and has no default")
        else:
            return default
    return node

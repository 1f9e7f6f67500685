"""Read a key from any config: a yacs-style ``CfgNode``, a LazyConfig, a dict, a detectron2 ``CfgNode``.

No detectron2 counterpart. The engine and the data code read a few keys from configs of several kinds and shapes
(detectron2's yacs names, LazyConfig's ``train.*`` names, configs without d2lightning's ``LIGHTNING`` section):
:func:`cfg_get` is the one lookup they all use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["cfg_get"]

_MISSING: Any = object()


def cfg_get(cfg: Any, *keys: str, default: Any = _MISSING) -> Any:
    """The value of the first of ``keys`` (dotted, e.g. ``"MODEL.PIXEL_MEAN"``) that ``cfg`` has.

    Mappings are read by item, other nodes by attribute, so yacs-style and omegaconf configs and plain dicts all
    work.

    Raises:
        KeyError: naming the keys, when ``cfg`` has none of them and no ``default`` is given.

    Example::

        cfg_get(cfg, "OUTPUT_DIR", "train.output_dir", default=None)   # a yacs config, or a LazyConfig
    """
    for key in keys:
        node = cfg
        for part in key.split("."):
            if isinstance(node, Mapping):
                if part not in node:
                    break
                node = node[part]
            elif hasattr(node, part):
                node = getattr(node, part)
            else:
                break
        else:
            return node
    if default is _MISSING:
        raise KeyError(f"config key {' / '.join(repr(k) for k in keys)} is missing and has no default")
    return default

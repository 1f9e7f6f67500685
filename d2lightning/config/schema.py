"""The registry of default keys that :func:`~d2lightning.config.get_cfg` returns, and how to extend it.

detectron2 has one fixed default tree (``detectron2/config/defaults.py``) and projects add keys by assigning
to a cfg (``add_deeplab_config(cfg)``). d2lightning keeps that, and also lets a module declare keys once,
globally, with :func:`extend_defaults`; every later ``get_cfg()`` then has them and validates them. A
registered model architecture declares its ``MODEL.*`` keys this way; when detectron2 is installed, its own
default tree is added with :func:`extend_defaults_from_cfgnode` so its model-zoo YAML files load as they are.

Keys are only ever added: redefining a key with a different default is an error naming both sources.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from d2lightning.config.defaults import BUILTIN_DEFAULTS, BUILTIN_SOURCE
from d2lightning.config.errors import ConfigError
from d2lightning.config.spec import KeySpec, coerce_value, describe_types, describe_value, is_valid_leaf

__all__ = ["default_tree", "extend_defaults", "extend_defaults_from_cfgnode", "spec_for"]


@dataclass(frozen=True)
class _Leaf:
    spec: KeySpec
    source: str


_Tree = dict[str, Any]  # values: _Leaf or _Tree
_TREE: _Tree = {}


def extend_defaults(defaults: Mapping[str, Any], *, source: str) -> None:
    """Add keys to the default config tree returned by every later :func:`get_cfg`.

    No detectron2 equivalent (detectron2 projects mutate a cfg with ``add_*_config(cfg)``, which still
    works). Nested mappings are sections; other values are defaults, or :class:`KeySpec` for several types
    or a validator. Re-declaring a key with an equal default (lists and tuples compare equal) is a no-op;
    the call is all-or-nothing.

    Args:
        defaults: e.g. ``{"MODEL": {"SHAPES": {"NUM_CLASSES": 3}}}``.
        source: who declares the keys (a module or architecture name), shown in conflict errors.

    Raises:
        ConfigError: a key is already defined with a different default, or as a section instead of a value
            (or the reverse); the message names the key and both sources.
        TypeError: ``defaults`` is not a mapping of str keys to valid config values.
        ValueError: ``source`` is empty.

    Example::

        extend_defaults({"MODEL": {"SHAPES": {"NUM_CLASSES": 3, "CHANNELS": [16, 32]}}}, source="ShapesNet")
        get_cfg().MODEL.SHAPES.NUM_CLASSES  # 3
    """
    _extend(defaults, source=source, on_conflict="error")


def extend_defaults_from_cfgnode(
    node: Mapping[str, Any], *, source: str = "detectron2", on_conflict: Literal["error", "keep"] = "error"
) -> None:
    """Add every key of a yacs/fvcore/detectron2 ``CfgNode`` (or any nested mapping) to the defaults.

    Meant for ``detectron2.config.get_cfg()`` when detectron2 is installed (the import itself belongs in
    ``d2lightning._compat``): its architecture keys (``MODEL.RPN.*``, ...) are added and the keys both
    define are checked for equal defaults.

    Args:
        node: the tree; any ``Mapping`` (a yacs ``CfgNode`` is a dict) whose leaves are config values.
        source: shown in conflict errors.
        on_conflict: "error" (as :func:`extend_defaults`) or "keep" (a key already defined keeps its
            current default; for a detectron2 release whose defaults differ from d2lightning's).

    Raises:
        ConfigError: on a conflicting key when ``on_conflict="error"``.
        TypeError / ValueError: as :func:`extend_defaults`; also for a bad ``on_conflict``.
    """
    if on_conflict not in ("error", "keep"):
        raise ValueError(f"on_conflict must be 'error' or 'keep', got {on_conflict!r}")
    _extend(node, source=source, on_conflict=on_conflict)


def spec_for(full_key: str) -> KeySpec | None:
    """The registered :class:`KeySpec` of a dotted leaf key, or None if it is not registered."""
    node: Any = _TREE
    for part in full_key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node.spec if isinstance(node, _Leaf) else None


def default_tree() -> dict[str, Any]:
    """A fresh nested dict of all registered defaults (deep copies; tuples stay tuples)."""

    def build(tree: _Tree) -> dict[str, Any]:
        return {k: build(v) if isinstance(v, dict) else copy.deepcopy(v.spec.default) for k, v in tree.items()}

    return build(_TREE)


def _extend(defaults: Mapping[str, Any], *, source: str, on_conflict: str) -> None:
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"source must be a non-empty string naming who declares the keys, got {source!r}")
    if not isinstance(defaults, Mapping):
        raise TypeError(f"defaults must be a nested mapping of config keys, got {type(defaults).__name__}")
    new_tree = copy.deepcopy(_TREE)
    _merge_into(new_tree, defaults, (), source, on_conflict)
    _TREE.clear()
    _TREE.update(new_tree)


def _merge_into(tree: _Tree, defaults: Mapping[str, Any], prefix: tuple[str, ...], source: str, mode: str) -> None:
    for key, value in defaults.items():
        if not isinstance(key, str) or not key or "." in key:
            raise TypeError(f"config keys must be non-empty strings without '.', got {key!r} under {prefix}")
        full = ".".join((*prefix, key))
        existing = tree.get(key)
        if isinstance(value, Mapping):
            if existing is None:
                tree[key] = existing = {}
            elif isinstance(existing, _Leaf):
                if mode == "keep":
                    continue
                raise _conflict(full, existing, "a section", source)
            _merge_into(existing, value, (*prefix, key), source, mode)
            continue
        spec = value if isinstance(value, KeySpec) else _leaf_spec(full, value)
        _check_default(full, spec)
        if existing is None:
            tree[key] = _Leaf(spec, source)
        elif isinstance(existing, dict):
            if mode != "keep":
                raise ConfigError(
                    f"Config key {full!r} is a section (defined by {_sources(existing)}); "
                    f"{source} redefines it as a value with default {spec.default!r}.",
                    key=full,
                )
        elif not _same_default(existing.spec.default, spec.default) and mode != "keep":
            raise _conflict(full, existing, f"default {spec.default!r}", source)


def _leaf_spec(full: str, value: Any) -> KeySpec:
    if not is_valid_leaf(value):
        raise TypeError(
            f"default of config key {full!r} must be a str, int, float, bool, None, a list/tuple of those, "
            f"a mapping (a section) or a KeySpec; got {describe_value(value)}"
        )
    return KeySpec(value)


def _check_default(full: str, spec: KeySpec) -> None:
    ok, _ = coerce_value(spec.default, spec.accepted_types())
    if not ok:
        raise TypeError(
            f"default of config key {full!r} is {describe_value(spec.default)}, "
            f"but its KeySpec accepts {describe_types(spec.accepted_types())}"
        )
    if spec.validator is not None and spec.default is not None:
        try:
            spec.validator(spec.default)
        except (ValueError, TypeError) as e:
            raise TypeError(f"default of config key {full!r} fails its own validator: {e}") from None


def _conflict(full: str, existing: _Leaf, new: str, source: str) -> ConfigError:
    return ConfigError(
        f"Config key {full!r} is already defined by {existing.source} with default "
        f"{existing.spec.default!r}; {source} redefines it as {new}. "
        "Use another key name, or the same default.",
        key=full,
    )


def _sources(tree: _Tree) -> str:
    found = sorted({leaf.source for leaf in _leaves(tree)})
    return ", ".join(found) if found else "an empty section"


def _leaves(tree: _Tree) -> list[_Leaf]:
    out: list[_Leaf] = []
    for v in tree.values():
        out.extend(_leaves(v) if isinstance(v, dict) else [v])
    return out


def _same_default(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_default(x, y) for x, y in zip(a, b, strict=False))
    return type(a) is type(b) and a == b


_extend(BUILTIN_DEFAULTS, source=BUILTIN_SOURCE, on_conflict="error")

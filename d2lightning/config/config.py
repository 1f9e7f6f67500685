"""``CfgNode`` and ``get_cfg``: ``detectron2.config``'s CfgNode API (yacs/fvcore), strictly checked.

A :class:`CfgNode` is what yacs' is: a ``dict`` with attribute access, whose values are plain Python values
(tuples stay tuples, lists are real lists) and whose sub-sections are ``CfgNode`` s. So code written against
detectron2 (``cfg.SOLVER.BASE_LR = 0.02``, ``torch.tensor(cfg.MODEL.PIXEL_MEAN)``, ``isinstance(cfg, dict)``,
``add_*_config(cfg)`` adding keys by assignment, pickling) runs unchanged. omegaconf parses and merges the
YAML files (see :mod:`d2lightning.config.loader`) and :meth:`CfgNode.to_omegaconf` hands the tree to
omegaconf/Lightning.

What is stricter than yacs, and always reported with the full key, the file or override, and what is
accepted (see :mod:`d2lightning.config.errors`):

- merging a file, another cfg or overrides is all-or-nothing: it is checked on a copy first;
- an unknown key raises :class:`UnknownKeyError` suggesting the closest valid key;
- a value's type is checked on every assignment, not only on merges (rules in :mod:`d2lightning.config.spec`),
  and keys with a fixed domain (``LIGHTNING.PRECISION``, ...) are validated;
- a frozen cfg refuses item assignment and merges too (yacs only guarded attribute assignment).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from d2lightning.config import schema
from d2lightning.config.errors import ConfigError, ConfigTypeError, FrozenConfigError, unknown_key_error
from d2lightning.config.loader import load_yaml_with_base
from d2lightning.config.merge import (
    accepted_types,
    merge_tree,
    section_error,
    set_path,
    type_error,
    typed_value,
)
from d2lightning.config.serialize import to_omegaconf, to_yaml
from d2lightning.config.spec import is_valid_leaf

__all__ = ["CfgNode", "get_cfg", "global_cfg", "set_global_cfg"]

logger = logging.getLogger(__name__)


class CfgNode(dict[str, Any]):
    """A config section: a dict with attribute access, validation, freezing and YAML merging.

    Mirrors ``detectron2.config.CfgNode`` (fvcore/yacs). Its methods: :meth:`merge_from_file`,
    :meth:`merge_from_list`, :meth:`merge_from_other_cfg`, :meth:`clone`, :meth:`freeze`,
    :meth:`defrost`, :meth:`is_frozen`, :meth:`dump`, :meth:`set_new_allowed`, :meth:`is_new_allowed`,
    :meth:`load_yaml_with_base`, plus :meth:`to_dict` and :meth:`to_omegaconf`.

    Args:
        init_dict: nested mapping to copy; sub-mappings become ``CfgNode`` s.
        key_list: the keys from the root to this node, used in messages (yacs' argument).
        new_allowed: whether merges may add keys that this node does not have (yacs).

    Example::

        cfg = get_cfg()
        cfg.merge_from_file(get_config_file("Base-D2Lightning"))  # d2lightning.model_zoo
        cfg.merge_from_list(["SOLVER.BASE_LR", "0.01"])
        cfg.freeze()
    """

    def __init__(
        self,
        init_dict: Mapping[str, Any] | None = None,
        key_list: Sequence[str] | None = None,
        new_allowed: bool = False,
    ) -> None:
        super().__init__()
        if init_dict is not None and not isinstance(init_dict, Mapping):
            raise TypeError(f"init_dict must be a mapping or None, got {type(init_dict).__name__}")
        object.__setattr__(self, "_key_list", tuple(key_list or ()))
        object.__setattr__(self, "_frozen", False)
        object.__setattr__(self, "_new_allowed", bool(new_allowed))
        object.__setattr__(self, "_schema", False)
        for key, value in (init_dict or {}).items():
            self._store(key, copy.deepcopy(value) if not isinstance(value, Mapping) else value, copy_nodes=True)

    # ----------------------------------------------------------------- access
    def __getattr__(self, name: str) -> Any:
        if name in self:
            return self[name]
        if name.startswith("_"):  # protocol probes (__deepcopy__, ...) and internals during unpickling
            raise AttributeError(name)
        raise unknown_key_error(self._full(name), self._flat_keys(), None)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__:
            raise AttributeError(f"{name!r} is internal CfgNode state and cannot be assigned")
        if name.startswith("COMPUTED_"):  # fvcore: insert-only keys, allowed even when frozen
            if name in self and self[name] != value:
                raise ConfigError(f"Computed config key {self._full(name)!r} is already {self[name]!r}, not {value!r}")
            self._store(name, value)
            return
        self[name] = value

    def __setitem__(self, key: str, value: Any) -> None:
        self._check_mutable(key)
        current = dict.get(self, key)
        if isinstance(current, CfgNode) and not isinstance(value, Mapping):
            raise section_error(self, key, value, None)
        if isinstance(value, Mapping) and not isinstance(current, CfgNode) and key in self:
            raise type_error(self, key, value, accepted_types(self, key), None)
        if not isinstance(value, Mapping):
            value = typed_value(self, key, [value], None)
        self._store(key, value)

    def __delitem__(self, key: str) -> None:
        self._check_mutable(key)
        super().__delitem__(key)

    def update(self, *args: Any, **kwargs: Any) -> None:
        """``dict.update`` through the same checks as item assignment."""
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: str, default: Any = None) -> Any:
        """``dict.setdefault`` through the same checks as item assignment."""
        if key not in self:
            self[key] = default
        return self[key]

    def pop(self, key: str, *default: Any) -> Any:
        """``dict.pop``; refused when frozen."""
        self._check_mutable(key)
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, Any]:
        """``dict.popitem``; refused when frozen."""
        self._check_mutable("")
        return super().popitem()

    def clear(self) -> None:
        """``dict.clear``; refused when frozen."""
        self._check_mutable("")
        super().clear()

    def __ior__(self, other: Any) -> CfgNode:  # type: ignore[override,misc]
        self.update(other)
        return self

    # ----------------------------------------------------------------- merging
    def merge_from_file(self, cfg_filename: str | os.PathLike[str], allow_unsafe: bool = True) -> None:
        """Merge a YAML file and its ``_BASE_`` chain into this cfg (detectron2 ``merge_from_file``).

        As in detectron2, ``allow_unsafe`` (default True) lets a file that uses Python YAML tags (such as
        detectron2's ``Base-RetinaNet.yaml``) be read with ``yaml.unsafe_load``, with a logged warning;
        pass False to refuse them. A file of an older ``VERSION`` (or without one that uses version 1 keys) is
        read as detectron2 reads it: this cfg is downgraded to the file's version, the file merged, and the
        result upgraded back (:mod:`d2lightning.config.compat`), with a logged warning.

        Raises:
            ConfigFileError: the file or a base is missing/unreadable/invalid, or the chain has a cycle.
            UnknownKeyError / ConfigTypeError: a key the cfg lacks, or a bad value, naming the file.
            ConfigError: the file's ``VERSION`` is newer than this cfg's.
        """
        path = os.fspath(cfg_filename)
        tree, origins = load_yaml_with_base(path, allow_unsafe)
        file_origins = {k: f"file {v!r}" for k, v in origins.items()}

        def merge(cfg: CfgNode) -> None:
            merge_tree(cfg, tree, file_origins, f"file {path!r}", cfg)

        version = self.get("VERSION") if not self._key_list else None
        if not isinstance(version, int) or isinstance(version, bool):
            self._atomic(merge)
            return
        from d2lightning.config import compat

        file_version = tree.get("VERSION")
        if file_version is None:
            file_version = compat.guess_version(tree, path)
        if file_version == version:
            self._atomic(merge)
            return
        if not isinstance(file_version, int) or isinstance(file_version, bool) or file_version > version:
            raise ConfigError(
                f"Config file {path!r} has VERSION {file_version!r}; this config reads VERSION {version} files and "
                "older ones.",
                key="VERSION",
                origin=f"file {path!r}",
            )
        logger.warning(f"Loading config file {path!r} of VERSION {file_version} by upgrading it to VERSION {version}")
        old = compat.downgrade_config(self, file_version)
        old._atomic(merge)
        self._replace_with(compat.upgrade_config(old, version))

    def merge_from_other_cfg(self, cfg_other: Mapping[str, Any]) -> None:
        """Merge another cfg (or nested mapping) into this one, with the same checks as a file."""
        if not isinstance(cfg_other, Mapping):
            raise TypeError(f"cfg_other must be a CfgNode or mapping, got {type(cfg_other).__name__}")
        self._atomic(lambda c: merge_tree(c, cfg_other, {}, "the merged config", c))

    def merge_from_list(self, cfg_list: Sequence[Any]) -> None:
        """Merge ``["KEY", VALUE, ...]`` pairs (yacs ``merge_from_list``); string values are literal_eval'ed.

        For ``a.b=c`` items as well, use :func:`d2lightning.config.apply_overrides`.

        Raises:
            ConfigError: the list has an odd length. UnknownKeyError / ConfigTypeError as for files.
        """
        if isinstance(cfg_list, (str, bytes)) or not isinstance(cfg_list, Sequence) or len(cfg_list) % 2:
            raise ConfigError(f"merge_from_list expects a list of KEY, VALUE pairs (even length), got {cfg_list!r}")
        pairs = [
            (str(k), v, f"override {f'{k} {v}'!r}", False) for k, v in zip(cfg_list[0::2], cfg_list[1::2], strict=True)
        ]
        self._set_overrides(pairs)

    def _set_overrides(self, items: Iterable[tuple[str, Any, str, bool]]) -> None:
        """Set dotted keys from ``(key, raw, origin, yaml_words)``, all-or-nothing (for overrides)."""
        items = list(items)

        def apply(cfg: CfgNode) -> None:
            for key, raw, origin, yaml_words in items:
                set_path(cfg, key, raw, origin, yaml_words)

        self._atomic(apply)

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> dict[str, Any]:
        """fvcore's ``CfgNode.load_yaml_with_base``: the file's dict with its ``_BASE_`` chain merged in."""
        return load_yaml_with_base(filename, allow_unsafe)[0]

    # ----------------------------------------------------------------- state
    def freeze(self) -> None:
        """Make this node and all its sub-nodes immutable."""
        self._set_flag("_frozen", True)

    def defrost(self) -> None:
        """Make this node and all its sub-nodes mutable again."""
        self._set_flag("_frozen", False)

    def is_frozen(self) -> bool:
        """Whether this node is frozen."""
        return bool(self.__dict__["_frozen"])

    def set_new_allowed(self, is_new_allowed: bool) -> None:
        """Allow (or not) merges to add keys to this node and its sub-nodes (yacs)."""
        self._set_flag("_new_allowed", bool(is_new_allowed))

    def is_new_allowed(self) -> bool:
        """Whether merges may add keys to this node."""
        return bool(self.__dict__["_new_allowed"])

    def clone(self) -> CfgNode:
        """A deep copy, with the same frozen / new-allowed state."""
        return copy.deepcopy(self)

    def __reduce__(self) -> tuple[Any, ...]:
        flags = (self._key_list, self._frozen, self._new_allowed, self._schema)
        return (_rebuild, (type(self), dict(self), *flags))

    # ----------------------------------------------------------------- export
    def dump(self, **kwargs: Any) -> str:
        """YAML text of this cfg that :meth:`merge_from_file` reads back (kwargs go to ``yaml.dump``)."""
        return to_yaml(self.to_dict(), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """A nested plain-dict deep copy (tuples stay tuples)."""
        return {k: v.to_dict() if isinstance(v, CfgNode) else copy.deepcopy(v) for k, v in self.items()}

    def to_omegaconf(self) -> Any:
        """An omegaconf ``DictConfig`` copy in struct mode (tuples become lists; ``${`` is kept literal)."""
        return to_omegaconf(self.to_dict())

    def __str__(self) -> str:
        return self.dump()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict.__repr__(self)})"

    # ----------------------------------------------------------------- internals
    def _full(self, key: str) -> str:
        return ".".join((*self._key_list, key))

    def _flat_keys(self) -> list[str]:
        out: list[str] = []
        for k, v in self.items():
            out.append(self._full(k))
            if isinstance(v, CfgNode):
                out.extend(v._flat_keys())
        return out

    def _set_flag(self, name: str, value: bool) -> None:
        object.__setattr__(self, name, value)
        for v in self.values():
            if isinstance(v, CfgNode):
                v._set_flag(name, value)

    def _adopt(self, key_list: tuple[str, ...], use_schema: bool) -> None:
        object.__setattr__(self, "_key_list", key_list)
        object.__setattr__(self, "_schema", use_schema)
        for k, v in self.items():
            if isinstance(v, CfgNode):
                v._adopt((*key_list, k), use_schema)

    def _check_mutable(self, key: str) -> None:
        if self._frozen:
            raise FrozenConfigError(
                f"Cannot change config key {self._full(key)!r}: the config is frozen; call cfg.defrost() first.",
                key=self._full(key),
            )

    def _store(self, key: Any, value: Any, copy_nodes: bool = False) -> None:
        if not isinstance(key, str) or not key or "." in key:
            raise ConfigTypeError(f"Config keys must be non-empty strings without '.', got {key!r}")
        if isinstance(value, Mapping):
            if not isinstance(value, CfgNode) or copy_nodes:
                value = CfgNode(value, (*self._key_list, key), self._new_allowed)
            # A node adopted as-is (yacs stores it, not a copy) keeps registry checks it already had.
            value._adopt((*self._key_list, key), self._schema or value._schema)
        elif not is_valid_leaf(value):
            raise type_error(self, key, value, None, None)
        dict.__setitem__(self, key, value)

    def _replace_with(self, other: CfgNode) -> None:
        """Hold ``other``'s keys and values instead of this node's own (both checked already)."""
        self._check_mutable("")
        dict.clear(self)
        for key, value in other.items():
            self._store(key, value)

    def _atomic(self, apply: Callable[[CfgNode], Any]) -> None:
        apply(self.clone())  # raises on the first bad key, leaving self untouched
        apply(self)


def _rebuild(
    cls: type[CfgNode],
    items: dict[str, Any],
    key_list: tuple[str, ...],
    frozen: bool,
    new_allowed: bool,
    sch: bool,
) -> CfgNode:
    node = cls.__new__(cls)
    for name, value in (
        ("_key_list", key_list),
        ("_frozen", frozen),
        ("_new_allowed", new_allowed),
        ("_schema", sch),
    ):
        object.__setattr__(node, name, value)
    for k, v in items.items():
        dict.__setitem__(node, k, v)
    return node


def get_cfg() -> CfgNode:
    """A fresh copy of the default config (detectron2 ``get_cfg``), checked against the key registry.

    Holds detectron2's keys and defaults plus d2lightning's (including the demo architecture's
    ``MODEL.SHAPES_DETECTOR``) and every key added with :func:`~d2lightning.config.extend_defaults` before this
    call. Imports no model code (nor torch).
    """
    cfg = CfgNode(schema.default_tree())
    cfg._adopt((), True)
    return cfg


global_cfg = CfgNode()


def set_global_cfg(cfg: CfgNode) -> None:
    """Make :data:`global_cfg` hold ``cfg``'s keys (detectron2 ``set_global_cfg``, a quick-hack global)."""
    global_cfg.clear()
    global_cfg.update(cfg)

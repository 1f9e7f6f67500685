"""detectron2's ``config.instantiate``: build the objects a LazyConfig describes.

A node with a ``_target_`` (a callable, or the dotted name of one) is called with its other keys as keyword
arguments, after those have been instantiated themselves; lists are instantiated item by item; a structured
(dataclass-backed) omegaconf config becomes its dataclass; anything else is returned as it is — detectron2's
rules exactly, so a config made with detectron2's ``LazyCall`` instantiates here and the other way round.
Unlike detectron2's, a failure names the key path of the node (``model.backbone``) and the target.

Example::

    from d2lightning.config import LazyCall as L, instantiate

    cfg = L(torch.nn.Linear)(in_features=4, out_features=2)
    layer = instantiate(cfg)
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib
import logging
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from d2lightning.config.errors import ConfigError, ConfigTypeError

__all__ = ["LazyTargetError", "instantiate", "instantiate_at", "locate", "target_to_string"]

TARGET_KEY = "_target_"


class LazyTargetError(ConfigError, ImportError):
    """A ``_target_`` that names nothing importable (also an ``ImportError``)."""


def locate(name: str) -> Any:
    """The object a dotted name refers to (``"torch.nn.Linear"``, ``"collections.OrderedDict.fromkeys"``).

    The longest importable module prefix is imported and the rest is looked up as attributes; a name without a
    dot may be a builtin (``"dict"``).

    Raises:
        ImportError: nothing of that name can be imported (the message says which part is missing). An error
            raised while importing an existing module propagates unchanged.
    """
    if not isinstance(name, str) or not name or any(not p.isidentifier() for p in name.split(".")):
        raise ImportError(f"{name!r} is not a dotted Python name")
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
                continue  # this prefix is not a module: try a shorter one
            raise
        for i, attr in enumerate(parts[split:], start=split):
            try:
                obj = getattr(obj, attr)
            except AttributeError:
                raise ImportError(f"{'.'.join(parts[:i])!r} has no attribute {attr!r}") from None
        return obj
    if len(parts) == 1 and hasattr(builtins, name):
        return getattr(builtins, name)
    raise ImportError(f"No module named {parts[0]!r}")


def target_to_string(target: Any) -> str:
    """The dotted name of ``target``, shortened to the shortest module path that still locates the same object
    (``detectron2.modeling.backbone.fpn.FPN`` -> ``detectron2.modeling.FPN``), as detectron2 writes it."""
    module, qualname = target.__module__, target.__qualname__
    parts = module.split(".")
    for k in range(1, len(parts)):
        candidate = f"{'.'.join(parts[:k])}.{qualname}"
        try:
            if locate(candidate) is target:
                return candidate
        except ImportError:
            pass
    return f"{module}.{qualname}"


def instantiate(cfg: Any) -> Any:
    """Recursively build the objects described by ``cfg`` (detectron2 ``instantiate``).

    Args:
        cfg: a ``DictConfig``/mapping with a ``_target_``, a list/``ListConfig`` of such, a structured config,
            or any other value (returned unchanged). Mappings without ``_target_`` are returned unchanged too.

    Returns:
        The built object (a ``ListConfig`` of built objects for a ``ListConfig``).

    Raises:
        LazyTargetError: a ``_target_`` cannot be imported (names the key path and the target).
        ConfigTypeError: a ``_target_`` is not callable, or calling it raised ``TypeError`` (names the key path).
    """
    return _instantiate(cfg, "")


def instantiate_at(root: Any, key: str) -> Any:
    """``instantiate(root.<key>)`` for a dotted ``key`` (``"dataloader.train"``), with errors naming the full key path
    (``model.backbone``) rather than a path relative to the node.

    Raises:
        LazyTargetError: a ``_target_`` cannot be imported.
        ConfigTypeError: a ``_target_`` is not callable, or calling it raised ``TypeError``.
    """
    node = root
    for part in key.split("."):
        node = node[part]
    return _instantiate(node, key)


def _join(path: str, key: Any) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))


def _instantiate(cfg: Any, path: str) -> Any:
    if isinstance(cfg, ListConfig):
        items = [_instantiate(x, _join(path, i)) for i, x in enumerate(cfg)]
        return ListConfig(items, flags={"allow_objects": True})
    if isinstance(cfg, list):
        return [_instantiate(x, _join(path, i)) for i, x in enumerate(cfg)]
    if isinstance(cfg, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(cfg)):
        return OmegaConf.to_object(cfg)
    if not (isinstance(cfg, Mapping) and TARGET_KEY in cfg):
        return cfg
    kwargs = {k: _instantiate(v, _join(path, k)) for k, v in cfg.items()}
    target = kwargs.pop(TARGET_KEY)
    where = f" at {path!r}" if path else ""
    if isinstance(target, str):
        name = target
        try:
            target = locate(name)
        except ImportError as e:
            raise LazyTargetError(
                f"Cannot import _target_ {name!r}{where}: {e}", key=_join(path, TARGET_KEY) or None
            ) from None
    else:
        name = getattr(target, "__qualname__", None) or repr(target)
        module = getattr(target, "__module__", None)
        name = f"{module}.{name}" if module and not name.startswith("<") else name
    if not callable(target):
        raise ConfigTypeError(
            f"_target_{where} is {target!r} ({type(target).__name__}), which is not callable; "
            "give a class or function, or its dotted name",
            key=_join(path, TARGET_KEY),
        )
    try:
        return target(**kwargs)
    except TypeError as e:
        logging.getLogger(__name__).error(f"Error when instantiating {name}{where}!")
        raise ConfigTypeError(f"Cannot instantiate {name}{where}: {e}", key=path or None) from e

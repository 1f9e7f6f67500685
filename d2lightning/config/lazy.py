"""detectron2's Python configs ("LazyConfig") on omegaconf: ``LazyCall`` and ``LazyConfig``.

``LazyCall(f)(a=1)`` records a call without making it: a ``DictConfig`` ``{"_target_": f, "a": 1}`` that can be
edited and later built with :func:`~d2lightning.config.instantiate`. ``LazyConfig`` loads Python and YAML config
files (:mod:`d2lightning.config.lazy_loader` runs the Python ones, relative imports included), saves them as YAML,
applies ``a.b=c`` overrides and renders them as Python-like code. The objects are the very omegaconf objects
detectron2 uses, so configs cross between the two libraries both ways: a config made with detectron2's
``LazyCall`` instantiates here, detectron2's own config files load here, and ours load there.

Stricter than detectron2: an override of a key the config does not have is refused (omegaconf's struct mode) with
the closest existing key (detectron2 silently adds it); add a new key on purpose with ``+a.b=c``. Errors name the
file, line, key or target concerned (see :mod:`d2lightning.config.errors`).

Example::

    from d2lightning.config import LazyConfig, instantiate

    cfg = LazyConfig.load(model_zoo.get_config_file("shapes_detector.py"))
    cfg = LazyConfig.apply_overrides(cfg, ["train.max_iter=100", "optimizer.lr=0.02"])
    model = instantiate(cfg.model)
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import is_dataclass
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf, SCMode, flag_override
from omegaconf.errors import ConfigAttributeError, ConfigIndexError, ConfigKeyError, ValidationError

from d2lightning.config.errors import (
    ConfigError,
    ConfigFileError,
    ConfigTypeError,
    UnknownKeyError,
    unknown_key_error,
)
from d2lightning.config.instantiate import TARGET_KEY, target_to_string
from d2lightning.config.lazy_loader import as_config, run_config_file
from d2lightning.config.spec import decode_candidates

__all__ = ["LazyCall", "LazyConfig"]

_SUFFIXES = (".py", ".yaml", ".yml")


class LazyCall:
    """Turn a call into a config: ``LazyCall(f)(**kwargs)`` is ``DictConfig({"_target_": f, **kwargs})``.

    Only keyword arguments are accepted (as in detectron2). A dataclass target is stored by its dotted name,
    which omegaconf can hold.

    Args:
        target: a callable, its dotted name, or a mapping that instantiates to a callable.

    Raises:
        TypeError: ``target`` is none of those.

    Example::

        layer_cfg = LazyCall(torch.nn.Conv2d)(in_channels=32, out_channels=32, kernel_size=3)
        layer_cfg.out_channels = 64
        layer = instantiate(layer_cfg)
    """

    def __init__(self, target: Any) -> None:
        if not (callable(target) or isinstance(target, (str, Mapping))):
            raise TypeError(f"LazyCall target must be a callable, its dotted name or a config; got {target!r}")
        self._target = target

    def __call__(self, **kwargs: Any) -> DictConfig:
        target = target_to_string(self._target) if is_dataclass(self._target) else self._target
        kwargs[TARGET_KEY] = target
        return DictConfig(content=kwargs, flags={"allow_objects": True})


class LazyConfig:
    """Load, save, override and print Python/YAML configs (detectron2 ``LazyConfig``)."""

    @staticmethod
    def load(filename: str | os.PathLike[str], keys: str | tuple[str, ...] | None = None) -> Any:
        """Load a ``.py`` or ``.yaml`` config file.

        Of a Python file, every global that is a mapping or an omegaconf config (and whose name has no leading
        underscore) is kept; modules, functions, classes and plain values are dropped, as in detectron2.

        Args:
            filename: the file (relative to the working directory, or absolute).
            keys: return only this top-level key, or a tuple of them (as a tuple), instead of the whole config.

        Returns:
            A ``DictConfig`` (or the requested keys).

        Raises:
            ConfigFileError: the file is missing, not ``.py``/``.yaml``/``.yml``, has a syntax error, raises,
                has an import cycle, or lacks a requested key.
        """
        filename = os.fspath(filename).replace("/./", "/")
        if os.path.splitext(filename)[1] not in _SUFFIXES:
            raise ConfigFileError(
                f"Config file {filename!r} has to be a Python (.py) or YAML (.yaml/.yml) file", path=filename
            )
        if not os.path.isfile(filename):
            raise ConfigFileError(f"Config file {filename!r} does not exist", path=filename)
        namespace = run_config_file(filename) if filename.endswith(".py") else _load_yaml(filename)
        if keys is not None:
            wanted = (keys,) if isinstance(keys, str) else tuple(keys)
            missing = [k for k in wanted if k not in namespace]
            if missing:
                raise ConfigFileError(f"Config file {filename!r} defines no {missing[0]!r}", path=filename)
            values = tuple(as_config(namespace[k]) for k in wanted)
            return values[0] if isinstance(keys, str) else values
        if isinstance(namespace, DictConfig):
            return namespace
        kept = {
            name: as_config(value)
            for name, value in namespace.items()
            if isinstance(value, (DictConfig, ListConfig, dict)) and not name.startswith("_")
        }
        return DictConfig(kept, flags={"allow_objects": True})

    @staticmethod
    def load_rel(filename: str, keys: str | tuple[str, ...] | None = None) -> Any:
        """:meth:`load` with ``filename`` relative to the calling file (a relative import by path)."""
        caller = inspect.stack()[1].filename
        if caller.startswith("<"):
            raise ConfigError(f"LazyConfig.load_rel({filename!r}) needs to be called from a file, not {caller}")
        return LazyConfig.load(os.path.join(os.path.dirname(caller), filename), keys)

    @staticmethod
    def save(cfg: Any, filename: str) -> None:
        """Write ``cfg`` as YAML that :meth:`load` reads back; callables in ``_target_`` become dotted names.

        If the config holds objects YAML cannot represent, the YAML file is still written (readable, not
        loadable) and the config is also pickled to ``filename + ".pkl"``, with a warning, as in detectron2.
        """
        logger = logging.getLogger(__name__)
        try:
            cfg = copy.deepcopy(cfg)
        except Exception:
            pass
        else:
            _visit_dict_configs(cfg, _target_as_string)
        loadable = True
        try:
            # interpolations stay as written; dataclass-backed nodes keep their type (instantiable after loading)
            tree = OmegaConf.to_container(cfg, resolve=False, structured_config_mode=SCMode.INSTANTIATE)
            dumped = yaml.dump(tree, default_flow_style=None, allow_unicode=True, width=9999)
            with open(filename, "w") as f:
                f.write(dumped)
            try:
                yaml.unsafe_load(dumped)
            except Exception:
                logger.warning(
                    f"The config contains objects that cannot serialize to a valid yaml. {filename} is "
                    "human-readable but cannot be loaded."
                )
                loadable = False
        except Exception:
            logger.exception("Unable to serialize the config to yaml. Error:")
            loadable = False
        if not loadable:
            try:
                with open(filename + ".pkl", "wb") as f:
                    _pickler().dump(cfg, f)
                logger.warning(f"Config is saved using {_pickler().__name__} at {filename}.pkl.")
            except Exception as e:
                logger.warning(f"Config could not be pickled either ({type(e).__name__}: {e}).")

    @staticmethod
    def apply_overrides(cfg: Any, overrides: Sequence[str] | None) -> Any:
        """Apply ``key=value`` overrides in place (``train.max_iter=100``) and return ``cfg``.

        A value is read as a Python literal (``0.1``, ``[1, 2]``, ``"a b"``, ``None``, ``True``), or as
        ``true``/``false``/``null``, else taken as a string. The key must exist (omegaconf's struct mode checks
        it); ``+key=value`` adds a new one. List items are addressed by index (``a.augmentations.0.size=64``).

        Raises:
            UnknownKeyError: the key does not exist (with the closest existing key), or is below a value that is
                not a config; a ``KeyError``, as detectron2 raises.
            ConfigTypeError: a typed (structured) config refuses the value.
            ConfigError: an item is not ``key=value``, or asks to delete a key (``~key``).
        """
        for item in overrides or ():
            text = str(item)
            if text.startswith("~"):
                raise ConfigError(f"Override {text!r}: deleting a key is not supported")
            key, sep, raw = text.partition("=")
            adding = key.startswith("+")
            key = key[1:] if adding else key
            if not sep or not key:
                raise ConfigError(f"Override {text!r} is not of the form key=value (e.g. train.max_iter=100)")
            value = decode_candidates(raw, yaml_words=True)[0]
            _check_prefixes(cfg, key, text)  # omegaconf would replace a plain value on the way by a config
            try:
                with flag_override(cfg, "struct", True):
                    OmegaConf.update(cfg, key, value, merge=True, force_add=adding)
            except (ConfigAttributeError, ConfigKeyError, ConfigIndexError):
                raise _missing_key_error(cfg, key, text) from None
            except ValidationError as e:
                message = str(e).splitlines()[0]
                raise ConfigTypeError(f"Override {text!r}: {message}", key=key) from None
        return cfg

    @staticmethod
    def to_py(cfg: Any, prefix: str = "cfg.") -> str:
        """Python-like code showing ``cfg`` (for reading, not meant to be run): one ``prefix.key = value`` line
        per top-level value, ``_target_`` nodes written as calls. Formatted with ``black`` when installed."""
        tree = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else copy.deepcopy(cfg)
        code = _python_lines(tree, prefix)
        try:
            import black
        except ImportError:
            return code
        try:
            return str(black.format_str(code, mode=black.Mode()))
        except Exception:  # black's own parse errors: keep the unformatted text
            return code


def _pickler() -> Any:
    """cloudpickle (which also pickles lambdas, as detectron2 uses) when installed, else pickle."""
    try:
        import cloudpickle
    except ImportError:
        return pickle
    return cloudpickle


def _check_prefixes(cfg: Any, key: str, text: str) -> None:
    """Refuse a key below a plain value (``train.lr.x`` where ``train.lr`` is a float), as detectron2 does."""
    parts = key.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        value = OmegaConf.select(cfg, prefix, default=_ABSENT, throw_on_missing=False)
        if value is _ABSENT:
            return
        if not OmegaConf.is_config(value):  # the key cannot exist: a KeyError, as detectron2 raises
            raise UnknownKeyError(
                f"Override {text!r}: {prefix!r} is a {type(value).__name__}, not a config with keys", key=key
            )


def _missing_key_error(cfg: Any, key: str, text: str) -> UnknownKeyError:
    """The error for a key ``cfg`` lacks, naming the closest existing key."""
    return unknown_key_error(key, _dotted_keys(cfg), f"override {text!r}", f" To add it as a new key, write '+{text}'.")


_ABSENT = object()


def _dotted_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys: list[str] = []
    if isinstance(cfg, DictConfig):
        for k in cfg:
            full = f"{prefix}{k!s}"
            keys.append(full)
            child = OmegaConf.select(cfg, str(k), throw_on_missing=False, throw_on_resolution_failure=False)
            keys.extend(_dotted_keys(child, full + "."))
    return keys


def _load_yaml(filename: str) -> DictConfig:
    try:
        with open(filename) as f:
            tree = yaml.unsafe_load(f)  # as detectron2: saved configs may hold Python objects
    except (OSError, yaml.YAMLError) as e:
        raise ConfigFileError(f"Cannot parse config file {filename!r}: {e}", path=filename) from None
    if not isinstance(tree, dict):
        raise ConfigFileError(f"Config file {filename!r} must hold a mapping at the top level", path=filename)
    return DictConfig(tree, flags={"allow_objects": True})


def _visit_dict_configs(cfg: Any, func: Callable[[DictConfig], None]) -> None:
    if isinstance(cfg, DictConfig):
        func(cfg)
        for value in cfg.values():
            _visit_dict_configs(value, func)
    elif isinstance(cfg, ListConfig):
        for value in cfg:
            _visit_dict_configs(value, func)


def _target_as_string(node: DictConfig) -> None:
    if TARGET_KEY in node:
        target = node[TARGET_KEY]
        if callable(target):
            with contextlib.suppress(AttributeError):  # no __module__ / __qualname__: keep the object
                node[TARGET_KEY] = target_to_string(target)


def _python_lines(tree: Any, prefix: str) -> str:
    def render(obj: Any, inside_call: bool = False) -> str:
        if isinstance(obj, Mapping) and TARGET_KEY in obj:
            obj = dict(obj)
            target = obj.pop(TARGET_KEY)
            name = target if isinstance(target, str) else target_to_string(target)
            return f"{name}({', '.join(f'{k}={render(v, True)}' for k, v in sorted(obj.items()))})"
        if isinstance(obj, Mapping):
            return "{" + ", ".join(f"{k!r}: {render(v, inside_call)}" for k, v in sorted(obj.items())) + "}"
        if isinstance(obj, list):
            return "[" + ", ".join(render(x, inside_call) for x in obj) + "]"
        return repr(obj)

    def lines(obj: Mapping[str, Any], path: str) -> list[str]:
        out: list[str] = []
        for k, v in sorted(obj.items()):
            if isinstance(v, Mapping) and TARGET_KEY not in v:
                out.extend(lines(v, f"{path}{k}."))
            else:
                out.append(f"{path}{k} = {render(v)}")
        return out

    return "\n".join(lines(tree, prefix) if isinstance(tree, Mapping) else [render(tree)]) + "\n"

"""Read a YAML config file and its ``_BASE_`` chain (fvcore ``CfgNode.load_yaml_with_base``).

As fvcore: ``_BASE_`` is a path or a list of paths, relative to the directory of the file that names it
(``~`` is expanded, absolute paths are kept); bases are merged in order, then the file itself on top;
mappings merge key by key and any other value (lists included) replaces the base's. Chains may be of any
depth.

With ``allow_unsafe`` (detectron2's ``merge_from_file`` default), a file that the safe loader refuses
because of a Python tag (detectron2's ``Base-RetinaNet.yaml`` uses ``!!python/object/apply:eval``) is read
again with ``yaml.unsafe_load``, and a warning is logged: only load such files from sources you trust.

Unlike fvcore: files are parsed with omegaconf's YAML loader (``1e-4`` is a float, duplicate keys are an
error), a cycle in the chain is an error showing the chain, URLs are refused, and every problem raises a
:class:`~d2lightning.config.errors.ConfigFileError` naming the file. The loader also reports, for every
leaf key, which file of the chain set its final value, so that a bad key is reported with the right file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, cast

import yaml
from omegaconf import DictConfig, OmegaConf

from d2lightning.config.errors import ConfigFileError

__all__ = ["BASE_KEY", "load_yaml_with_base"]

BASE_KEY = "_BASE_"


def load_yaml_with_base(
    filename: str | os.PathLike[str], allow_unsafe: bool = False
) -> tuple[dict[str, Any], dict[str, str]]:
    """Load ``filename`` with its ``_BASE_`` files merged in.

    Args:
        filename: the YAML file.
        allow_unsafe: read a file with Python tags using ``yaml.unsafe_load`` (runs code from the file).

    Returns:
        ``(tree, origins)``: the merged nested dict (without ``_BASE_``), and for every dotted leaf key the
        path of the file that gave its value.

    Raises:
        ConfigFileError: a file is missing, unreadable, not YAML, not a mapping, a ``_BASE_`` entry is not a
            path, or the chain has a cycle.
    """
    return _load(os.fspath(filename), (), allow_unsafe)


def _load(path: str, chain: tuple[str, ...], unsafe: bool) -> tuple[dict[str, Any], dict[str, str]]:
    real = os.path.realpath(path)
    if real in chain:
        cycle = " -> ".join([*chain[chain.index(real) :], real])
        raise ConfigFileError(f"_BASE_ cycle in config files: {cycle}", path=path)
    own = _read_yaml(path, unsafe)
    bases = own.pop(BASE_KEY, None)
    tree = OmegaConf.create({})
    origins: dict[str, str] = {}
    for base in _base_paths(bases, path):
        base_tree, base_origins = _load(base, (*chain, real), unsafe)
        tree = _merge(tree, base_tree, base)
        _drop_replaced(origins, base_tree)
        origins.update(base_origins)
    tree = _merge(tree, own, path)
    _drop_replaced(origins, own)
    origins.update(dict.fromkeys(_flat_keys(own), path))
    return cast(dict[str, Any], OmegaConf.to_container(tree, resolve=False)), origins


def _read_yaml(path: str, unsafe: bool) -> dict[str, Any]:
    if not os.path.exists(path):
        raise ConfigFileError(f"Config file {path!r} does not exist.", path=path)
    if not os.path.isfile(path):
        raise ConfigFileError(f"Config file {path!r} is not a file.", path=path)
    if path.endswith(".py"):
        raise ConfigFileError(
            f"Config file {path!r} is a Python (LazyConfig) file; CfgNode reads YAML files only.", path=path
        )
    try:
        loaded = OmegaConf.load(path)
    except OSError as e:
        raise ConfigFileError(f"Cannot read config file {path!r}: {e}", path=path) from None
    except yaml.constructor.ConstructorError as e:
        if "constructor for the tag" not in str(e.problem):  # e.g. a duplicate key
            raise ConfigFileError(f"Cannot parse config file {path!r}: {e}", path=path) from None
        if not unsafe:
            raise ConfigFileError(
                f"Cannot parse config file {path!r}: {e}\n(It uses a Python tag; pass allow_unsafe=True to "
                "merge_from_file to run it, if you trust the file.)",
                path=path,
            ) from None
        return _read_unsafe(path)
    except Exception as e:
        # yaml and omegaconf parse errors: re-raised with the path, without omegaconf's traceback
        raise ConfigFileError(f"Cannot parse config file {path!r}: {e}", path=path) from None
    if not isinstance(loaded, DictConfig):
        raise ConfigFileError(
            f"Config file {path!r} must hold a mapping of config keys at the top level, got a list.",
            path=path,
        )
    return cast(dict[str, Any], OmegaConf.to_container(loaded, resolve=False))


def _read_unsafe(path: str) -> dict[str, Any]:
    logging.getLogger(__name__).warning(
        "Loading config %s with yaml.unsafe_load. Your machine may be at risk if the file contains malicious content.",
        path,
    )
    try:
        with open(path) as f:
            loaded = yaml.unsafe_load(f)
    except Exception as e:  # anything the file's own code raises, reported with the path
        raise ConfigFileError(f"Cannot parse config file {path!r}: {e}", path=path) from None
    if not isinstance(loaded, dict):
        raise ConfigFileError(f"Config file {path!r} must hold a mapping of config keys at the top level.", path=path)
    return loaded


def _base_paths(bases: Any, including: str) -> list[str]:
    if bases is None:
        return []
    entries = bases if isinstance(bases, list) else [bases]
    paths = []
    for entry in entries:
        if not isinstance(entry, str) or not entry:
            raise ConfigFileError(
                f"{BASE_KEY} in {including!r} must be a file path or a list of file paths, got {bases!r}",
                path=including,
            )
        if entry.startswith(("http://", "https://")):
            raise ConfigFileError(
                f"{BASE_KEY} {entry!r} in {including!r}: URLs are not supported; download the file first.",
                path=including,
            )
        entry = os.path.expanduser(entry)
        paths.append(entry if os.path.isabs(entry) else os.path.join(os.path.dirname(including), entry))
    return paths


def _merge(tree: DictConfig, other: Mapping[str, Any], path: str) -> DictConfig:
    try:
        return cast(DictConfig, OmegaConf.merge(tree, other))
    except Exception as e:  # omegaconf merge errors, reported with the file
        raise ConfigFileError(f"Cannot merge config file {path!r} into its bases: {e}", path=path) from None


def _flat_keys(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for k, v in tree.items():
        full = f"{prefix}{k}"
        keys.extend(_flat_keys(v, full + ".") if isinstance(v, Mapping) and v else [full])
    return keys


def _drop_replaced(origins: dict[str, str], tree: Mapping[str, Any]) -> None:
    """Forget origins of keys below a leaf that ``tree`` replaces (a mapping replaced by a value)."""
    for key in _flat_keys(tree):
        prefix = key + "."
        for old in [k for k in origins if k.startswith(prefix)]:
            del origins[old]

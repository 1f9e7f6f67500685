"""The configs that ship inside the package (detectron2 ``model_zoo.get_config_file``).

detectron2 keeps its configs in the top-level ``configs/`` folder of its repository, ships them inside the package
as ``detectron2/model_zoo/configs`` and hands out their paths with ``get_config_file("COCO-Detection/...yaml")``;
d2lightning does the same for its built-in configs (the demo ``shapes_detector.yaml``, its base
``Base-D2Lightning.yaml``, and the demo as a LazyConfig, ``shapes_detector.py``). Every ``.yaml`` and ``.py`` file
placed in the repository's ``configs/`` folder is a built-in config: the wheel ships it as
``d2lightning/model_zoo/configs/`` (see ``setup.py``) and it is found here, with no list to update. A config is named
by its path relative to that folder, with or without its extension (``"shapes_detector"`` or
``"shapes_detector.yaml"``); where a YAML and a Python config share a name, the bare name means the YAML one.

Where the folder is: inside the installed package (a wheel), else the ``configs/`` folder of the source checkout
this ``d2lightning`` was imported from (an editable install, or the repository on ``sys.path``).

Unlike detectron2 (a ``RuntimeError``), an unknown name raises :class:`~d2lightning.config.ConfigFileError`
naming the built-in configs and the closest one. Nothing here imports torch.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path, PurePosixPath

__all__ = ["builtin_config_names", "get_config_file", "resolve_config_file"]

_INSTALLED_CONFIG_DIR = Path(__file__).resolve().with_name("configs")  # in a wheel (setup.py maps configs/ there)
_SOURCE_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"  # the checkout's top-level configs/

CONFIG_DIR = _INSTALLED_CONFIG_DIR if _INSTALLED_CONFIG_DIR.is_dir() else _SOURCE_CONFIG_DIR
"""The folder holding the built-in configs: the installed package's, else the source checkout's ``configs/``."""
CONFIG_SUFFIXES = (".yaml", ".py")
"""The kinds of config file found there, in order of preference for a bare name."""


def builtin_config_names() -> list[str]:
    """The built-in configs, as paths relative to the config folder with their extension, sorted.

    Example::

        >>> builtin_config_names()
        ['Base-D2Lightning.yaml', 'shapes_detector.py', 'shapes_detector.yaml']
    """
    return sorted(
        path.relative_to(CONFIG_DIR).as_posix()
        for path in CONFIG_DIR.rglob("*")
        if path.suffix in CONFIG_SUFFIXES and path.is_file() and not path.name.startswith(("_", "."))
    )


def _lookup(name: str) -> str | None:
    names = builtin_config_names()
    if name in names:
        return name
    for suffix in CONFIG_SUFFIXES:
        if name + suffix in names:
            return name + suffix
    return None


def get_config_file(config_path: str) -> str:
    """The absolute path of the built-in config ``config_path`` (detectron2 ``model_zoo.get_config_file``).

    Args:
        config_path: a name from :func:`builtin_config_names`, with or without its extension, e.g.
            ``"shapes_detector"``.

    Returns:
        The path of the file inside the installed package.

    Raises:
        ConfigFileError: ``config_path`` is not a built-in config; the message lists them and names the
            closest one.

    Example::

        cfg = get_cfg()
        cfg.merge_from_file(get_config_file("shapes_detector"))
    """
    found = _lookup(config_path)
    if found is None:
        raise _unknown(config_path, f"{config_path!r} is not a built-in config")
    return str(CONFIG_DIR / found)


def resolve_config_file(file_or_name: str | os.PathLike[str]) -> str:
    """What ``--config-file`` names: an existing path as given, else the built-in config of that name.

    A file wins over a built-in config of the same name.

    Raises:
        ConfigFileError: ``file_or_name`` is neither a file nor a built-in config; the message lists the
            built-in configs and the closest one.
    """
    value = os.fspath(file_or_name)
    if os.path.exists(value):  # also a directory: reading it then says what is wrong
        return value
    found = _lookup(value)
    if found is None:
        raise _unknown(value, f"Config file {value!r} does not exist and is not a built-in config either")
    return str(CONFIG_DIR / found)


def _unknown(value: str, what: str) -> Exception:
    from d2lightning.config.errors import ConfigFileError

    names = builtin_config_names()
    message = f"{what}; built-in configs: {', '.join(names) or '(none)'}"
    closest = _closest(value, names)
    if closest is not None:
        message += f"; did you mean {closest!r}?"
    return ConfigFileError(message, path=value)


def _closest(value: str, names: list[str]) -> str | None:
    """The built-in config closest to ``value``, or to its last path component (``configs/x.yml`` -> ``x.yaml``),
    comparing with the names with and without their extension."""
    candidates = {str(PurePosixPath(n).with_suffix("")): n for n in reversed(names)} | {n: n for n in names}
    for query in (value, PurePosixPath(value.replace(os.sep, "/")).name):
        match = difflib.get_close_matches(query, list(candidates), n=1, cutoff=0.6)
        if match:
            return candidates[match[0]]
    return None

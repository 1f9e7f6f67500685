"""Run a Python (LazyConfig) config file, with relative imports between config files (detectron2's
``LazyConfig.load`` of a ``.py`` file).

A config file is executed as a module of its own. Inside it, ``from .common import train`` or
``from ..data.coco import dataloader`` import *other config files* relative to it (``common.py``,
``../data/coco.py``), and ``from . import common`` / ``from ..common import train`` import the files
``common.py`` / ``../common/train.py`` as modules; each import runs that file again, and the mappings it
names become ``DictConfig`` s. Absolute imports are ordinary Python
imports.

How, without touching global state: each config file runs with its own ``__builtins__`` whose ``__import__``
resolves relative imports to files and hands every other import to Python's. (detectron2 swaps
``builtins.__import__`` for the whole process while a config loads.) Errors: a syntax error names the file and
line; an import cycle between config files shows the cycle; an error raised by a config file's code names the
file and line; a relative import of a missing file names the file looked for. All are :class:`ConfigFileError`; a
bad relative import is a :class:`ConfigImportError`, also an ``ImportError`` (what detectron2 raises).
"""

from __future__ import annotations

import builtins
import os
import traceback
import uuid
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from omegaconf import DictConfig

from d2lightning.config.errors import ConfigFileError, ConfigImportError

__all__ = ["as_config", "run_config_file"]

PACKAGE_PREFIX = "d2lightning._lazy_config"


def as_config(value: Any) -> Any:
    """A plain ``dict`` as a ``DictConfig`` that may hold any object; anything else unchanged."""
    return DictConfig(value, flags={"allow_objects": True}) if isinstance(value, dict) else value


def run_config_file(filename: str) -> dict[str, Any]:
    """Execute the config file ``filename`` and return its global namespace.

    Raises:
        ConfigFileError: the file is missing, has a syntax error, raises, imports itself through a cycle, or
            imports a config file that does not exist.
    """
    return _run(filename, ())


def _run(filename: str, chain: tuple[str, ...]) -> dict[str, Any]:
    real = os.path.realpath(filename)
    if real in chain:
        cycle = " -> ".join(os.path.relpath(p) for p in (*chain[chain.index(real) :], real))
        raise ConfigFileError(f"Circular import between config files: {cycle}", path=filename)
    code = _compile(filename)
    # no __name__, as in detectron2: what the file defines has no importable module either way
    namespace: dict[str, Any] = {
        "__file__": filename,
        "__package__": f"{PACKAGE_PREFIX}.{uuid.uuid4().hex[:8]}",
        "__builtins__": _builtins_for((*chain, real)),
    }
    try:
        exec(code, namespace)
    except ConfigFileError:
        raise
    except Exception as e:
        line = _line_in(e, filename)
        raise ConfigFileError(f"Config file {filename!r}{line} raised {type(e).__name__}: {e}", path=filename) from e
    return namespace


def _compile(filename: str) -> Any:
    try:
        with open(filename) as f:
            source = f.read()
    except OSError as e:
        raise ConfigFileError(f"Cannot read config file {filename!r}: {e.strerror or e}", path=filename) from None
    try:
        return compile(source, filename, "exec")
    except SyntaxError as e:
        raise ConfigFileError(
            f"Config file {filename!r} has a syntax error at line {e.lineno}: {e.msg}", path=filename
        ) from None


def _line_in(error: BaseException, filename: str) -> str:
    """``", line N"`` of the deepest frame of ``error``'s traceback that is in ``filename``."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == filename]
    return f", line {frames[-1].lineno}," if frames else ""


def _builtins_for(chain: tuple[str, ...]) -> dict[str, Any]:
    """Python's builtins with an ``__import__`` that loads relative imports from config files."""
    python_import = builtins.__import__

    def config_import(
        name: str,
        globals: Mapping[str, Any] | None = None,
        locals: Mapping[str, Any] | None = None,
        fromlist: Sequence[str] | None = (),
        level: int = 0,
    ) -> Any:
        package = str((globals or {}).get("__package__") or "")
        if level == 0 or not package.startswith(PACKAGE_PREFIX):
            return python_import(name, globals, locals, fromlist or (), level)
        importer = str((globals or {})["__file__"])
        if _is_folder(importer, name, level) and fromlist:  # from .folder import a, b: config files in it
            module = ModuleType(package)
            for item in fromlist:
                sub = _load_module(_relative_file(importer, f"{name}.{item}".lstrip("."), level), chain)
                for key, value in vars(sub).items():
                    if not key.startswith("_"):
                        setattr(sub, key, as_config(value))
                setattr(module, item, sub)
            return module
        module = _load_module(_relative_file(importer, name, level), chain)
        for item in fromlist or ():
            if item != "*" and item in module.__dict__:
                module.__dict__[item] = as_config(module.__dict__[item])
        return module

    table = dict(vars(builtins))
    table["__import__"] = config_import
    return table


def _load_module(filename: str, chain: tuple[str, ...]) -> ModuleType:
    namespace = _run(filename, chain)
    module = ModuleType(f"{namespace['__package__']}.{os.path.basename(filename)}")
    module.__dict__.update(namespace)
    return module


def _relative_path(importer: str, name: str, level: int) -> str:
    """The path (without ``.py``) that ``<level dots><name>`` in ``importer`` refers to."""
    folder = os.path.dirname(importer)
    for _ in range(level - 1):
        folder = os.path.dirname(folder)
    return os.path.join(folder, *[part for part in name.split(".") if part])


def _is_folder(importer: str, name: str, level: int) -> bool:
    path = _relative_path(importer, name, level)
    return os.path.isdir(path) and not os.path.isfile(path + ".py")


def _relative_file(importer: str, name: str, level: int) -> str:
    """The config file that ``from <level dots><name> import ...`` in ``importer`` refers to."""
    path = _relative_path(importer, name, level)
    if os.path.isfile(path + ".py"):
        return path + ".py"
    dots = "." * level
    if os.path.isdir(path):
        raise ConfigImportError(
            f"Config file {importer!r} imports {dots}{name}, which is a folder: a relative import in a config file "
            f"names config files, so import those in it (from {dots}{name}.FILE import ...), not the folder",
            path=importer,
        )
    raise ConfigImportError(
        f"Config file {importer!r} imports {dots}{name}, but {path + '.py'!r} does not exist (a relative import in "
        "a config file names another config file)",
        path=importer,
    )

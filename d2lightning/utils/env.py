"""detectron2's ``utils.env`` (``seed_all_rng``, ``setup_environment``, ``setup_custom_environment``,
``fixup_module_metadata``, ``TORCH_VERSION``, ``DOC_BUILDING``) and ``utils.collect_env.collect_env_info``, plus the
RNG-state helpers exact resume needs."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import platform
import re
import sys
import time
from collections.abc import Iterable, MutableMapping
from typing import Any

import torch

__all__ = [
    "DOC_BUILDING",
    "TORCH_VERSION",
    "collect_env_info",
    "fixup_module_metadata",
    "get_rng_states",
    "seed_all_rng",
    "set_rng_states",
    "setup_custom_environment",
    "setup_environment",
]

#: ``(major, minor)`` of the installed torch, as detectron2's ``TORCH_VERSION``.
TORCH_VERSION: tuple[int, ...] = tuple(int(x) for x in torch.__version__.split(".")[:2])
#: Whether documentation is being built (``$_DOC_BUILDING`` set), as detectron2's.
DOC_BUILDING: bool = bool(os.getenv("_DOC_BUILDING", ""))
_ENV_MODULE_VARIABLE = "DETECTRON2_ENV_MODULE"
_environment_done: list[bool] = []  # non-empty once setup_environment ran (detectron2 runs it once per process)


def _installed_version(dist: str) -> str:
    """A distribution's version without importing it (only ``d2lightning._compat`` imports detectron2).

    A package importable without distribution metadata (detectron2 built in place and put on ``PYTHONPATH``) is
    reported with the ``__version__`` written in its ``__init__.py`` and its location.
    """
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec(dist)
    if spec is None or not spec.origin:
        return "not installed"
    location = os.path.dirname(spec.origin)
    try:
        with open(spec.origin) as f:
            found = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", f.read(), re.MULTILINE)
    except OSError:
        found = None
    return f"{found.group(1) if found else 'unknown version'} @{location} (no package metadata)"


def seed_all_rng(seed: int | None = None) -> int:
    """Seed Python's ``random``, numpy and torch (every device), and set ``PYTHONHASHSEED``.

    Args:
        seed: the seed; None draws one from the pid, the clock and ``os.urandom`` and logs it (detectron2).

    Returns:
        The seed used.
    """
    from lightning.fabric.utilities.seed import seed_everything

    if seed is None:
        seed = (os.getpid() + int(time.time() * 1e6) + int.from_bytes(os.urandom(2), "big")) % 2**31
        logging.getLogger(__name__).info(f"Using a generated random seed {seed}")
    os.environ["PYTHONHASHSEED"] = str(seed)
    return seed_everything(seed, workers=True, verbose=False)


def collect_env_info() -> str:
    """A short table of the versions that matter for a run (Python, torch, Lightning, CUDA, d2lightning)."""
    import lightning
    import numpy

    from d2lightning._version import __version__

    rows = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.replace("\n", " ")),
        ("machine", platform.machine()),
        ("numpy", numpy.__version__),
        ("torch", torch.__version__),
        ("lightning", lightning.__version__),
        ("d2lightning", __version__),
        ("CUDA available", str(torch.cuda.is_available())),
    ]
    if torch.cuda.is_available():
        rows.append(("GPU 0", torch.cuda.get_device_name(0)))
        rows.append(("CUDA (torch)", str(torch.version.cuda)))
    rows.append(("detectron2", _installed_version("detectron2")))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def setup_environment() -> None:
    """Run the user's environment set-up once per process (detectron2 ``setup_environment``).

    When ``$DETECTRON2_ENV_MODULE`` names a Python file or a module, its ``setup_environment()`` is called
    (:func:`setup_custom_environment`); otherwise nothing is done. Later calls do nothing.
    """
    if _environment_done:
        return
    _environment_done.append(True)
    custom = os.environ.get(_ENV_MODULE_VARIABLE)
    if custom:
        setup_custom_environment(custom)


def setup_custom_environment(custom_module: str) -> None:
    """Import a Python file (``*.py``) or a module and call its ``setup_environment()``.

    Raises:
        ImportError: the file or module cannot be imported.
        AttributeError: it has no callable ``setup_environment``.
    """
    if custom_module.endswith(".py"):
        spec = importlib.util.spec_from_file_location("d2lightning.utils.env.custom_module", custom_module)
        if spec is None or spec.loader is None or not os.path.isfile(custom_module):
            raise ImportError(f"Custom environment file {custom_module!r} does not exist")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(custom_module)
    setup = getattr(module, "setup_environment", None)
    if not callable(setup):
        raise AttributeError(f"Custom environment module {custom_module!r} has no callable 'setup_environment'")
    setup()


def fixup_module_metadata(
    module_name: str, namespace: MutableMapping[str, Any], keys: Iterable[str] | None = None
) -> None:
    """While documentation is built (:data:`DOC_BUILDING`), show the public members of ``namespace`` as members of
    ``module_name`` (their ``__module__``; ``__name__``/``__qualname__`` = the exported name). Otherwise a no-op,
    as in detectron2.
    """
    if not DOC_BUILDING:
        return
    for name in list(namespace) if keys is None else keys:
        obj = namespace[name]
        if name.startswith("_") or not str(getattr(obj, "__module__", "")).startswith(module_name):
            continue
        obj.__module__ = module_name
        if "." not in getattr(obj, "__name__", "."):
            obj.__name__ = obj.__qualname__ = name


def get_rng_states() -> dict[str, Any]:
    """The states of Python's ``random``, numpy's global RNG and torch's CPU (and CUDA) generators."""
    import random

    import numpy as np

    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_safe(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_states` returned (CUDA states only when CUDA is in use)."""
    import random

    import numpy as np

    random.setstate(states["python"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, np.asarray(keys.numpy(), dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _numpy_state_to_safe(state: Any) -> tuple[str, torch.Tensor, int, int, float]:
    """numpy's state with its key array as a tensor: loadable by ``torch.load(weights_only=True)``."""
    name, keys, pos, has_gauss, gauss = state
    return str(name), torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(gauss)

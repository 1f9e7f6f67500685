"""Environment helpers with detectron2's names: ``seed_all_rng``, ``collect_env_info``."""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from typing import Any

import torch

__all__ = ["collect_env_info", "get_rng_states", "seed_all_rng", "set_rng_states"]


def _installed_version(dist: str) -> str:
    """A distribution's version without importing it (only ``d2lightning._compat`` imports detectron2)."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


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

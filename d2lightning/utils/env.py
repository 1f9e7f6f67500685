"""Environment helpers with detectron2's names: ``seed_all_rng``, ``collect_env_info``."""

from __future__ import annotations

import logging
import os
import platform
import sys
import time

import torch

__all__ = ["collect_env_info", "seed_all_rng"]


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

    import d2lightning

    rows = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.replace("\n", " ")),
        ("machine", platform.machine()),
        ("numpy", numpy.__version__),
        ("torch", torch.__version__),
        ("lightning", lightning.__version__),
        ("d2lightning", d2lightning.__version__),
        ("CUDA available", str(torch.cuda.is_available())),
    ]
    if torch.cuda.is_available():
        rows.append(("GPU 0", torch.cuda.get_device_name(0)))
        rows.append(("CUDA (torch)", str(torch.version.cuda)))
    rows.append(("detectron2", _installed_version("detectron2")))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)

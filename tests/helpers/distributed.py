"""Helpers the multi-process tests share: hiding launcher variables, and passing each rank's findings back.

Light on purpose (no torch): the job scripts of ``tests/jobs/`` import it before anything else.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK")
LAUNCHER_VARS = (*ENV_KEYS, "TORCHELASTIC_RUN_ID", "GROUP_RANK")


@contextlib.contextmanager
def without_launcher_variables() -> Iterator[None]:
    """Hide every launcher variable (SLURM_*, torchrun's, MASTER_*...) from ``os.environ`` for a while.

    So that a test behaves as under a plain ``python``, even when pytest runs inside srun or after a test
    that leaked Lightning's variables.
    """
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k in LAUNCHER_VARS or k.startswith("SLURM_")}
    try:
        yield
    finally:
        os.environ.update(saved)


def write_result(out_dir: str | Path, rank: int, payload: dict[str, Any]) -> None:
    """Write one rank's findings as ``rank{rank}.json`` (atomically)."""
    path = Path(out_dir) / f"rank{rank}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, sort_keys=True))
    os.replace(tmp, path)


def read_results(out_dir: str | Path, world_size: int) -> list[dict[str, Any]]:
    """The findings of ranks ``0 .. world_size - 1``, in rank order."""
    return [json.loads((Path(out_dir) / f"rank{r}.json").read_text()) for r in range(world_size)]


def free_port(low: int = 20000, high: int = 30000) -> int:
    """A port of ``[low, high)`` that nothing listens on, tried in random order (other test runs on the same
    machine look for one too); below the ephemeral range, so no outgoing connection takes it meanwhile."""
    for port in random.sample(range(low, high), high - low):
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in [{low}, {high})")

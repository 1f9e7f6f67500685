"""Snapshots of a process' random generators (Python's ``random``, numpy's global one, torch's CPU one).

A snapshot is a plain ``dict`` of ints, floats, tuples and ``bytes``: cheap to send from a DataLoader worker to the
main process (no tensor, so no shared-memory handle per snapshot; Python's state as packed words) and loadable by
``torch.load(weights_only=True)`` when it sits in a checkpoint. About 10 KB pickled; taking one costs ~0.1 ms
(numpy's ``get_state`` dominates: it copies its key word by word).

CUDA generators are not included: a data mapper runs on the CPU. (The engine saves the main process' full RNG
states, CUDA included, with ``d2lightning.utils.env.get_rng_states``; this module is for the data stream's
per-item and per-worker states.)
"""

from __future__ import annotations

import contextlib
import random
from array import array
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["RngSnapshot", "capture", "forked", "restore"]

#: ``{"python": (version, state words as uint32 bytes, gauss_next), "numpy": (key bytes, pos, has_gauss,
#: cached_gaussian), "torch": state bytes}``
RngSnapshot = dict[str, Any]

_UINT32 = next(code for code in "IL" if array(code).itemsize == 4)  # Python's state words are < 2**32


def capture() -> RngSnapshot:
    """This process' Python, numpy and torch (CPU) generator states; draws nothing."""
    numpy_state: Any = np.random.get_state()
    _, keys, pos, has_gauss, gauss = numpy_state
    version, words, gauss_next = random.getstate()
    return {
        "python": (version, array(_UINT32, words).tobytes(), gauss_next),
        "numpy": (keys.tobytes(), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state().numpy().tobytes(),
    }


def restore(snapshot: Mapping[str, Any]) -> None:
    """Set this process' Python, numpy and torch (CPU) generators to ``snapshot`` (from :func:`capture`)."""
    random.setstate(_as_python_state(snapshot["python"]))
    keys, pos, has_gauss, gauss = snapshot["numpy"]
    np.random.set_state(("MT19937", np.frombuffer(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(torch.frombuffer(bytearray(snapshot["torch"]), dtype=torch.uint8))


@contextlib.contextmanager
def forked(snapshot: Mapping[str, Any] | None) -> Iterator[RngSnapshot]:
    """Run the body on ``snapshot``'s generators (or on the current ones when None), then put back the generators
    as they were before: the draws of the body leave no trace. Yields the snapshot the body starts from."""
    saved = capture()
    start = saved if snapshot is None else dict(snapshot)
    try:
        if snapshot is not None:
            restore(snapshot)
        yield start
    finally:
        restore(saved)


def _as_python_state(state: Any) -> tuple[Any, ...]:
    version, words, gauss_next = state
    return (version, tuple(array(_UINT32, words)), gauss_next)

"""The protocol of a resumable training stream, its error type, and what every implementation shares.

A :class:`TrainStream` hands out a train loader's batches and can say where it stands (``state_dict``) and
continue from there in a new process (``load_state_dict``), or place itself from the iteration alone (``seek``).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["StreamBase", "StreamStateError", "TrainStream", "sampler_digest"]


@runtime_checkable
class TrainStream(Protocol):
    """An iterator over a train loader's batches that can be saved and continued exactly.

    Lifecycle, per rank: create it, then optionally ``load_state_dict(state)`` *or* ``seek(num_batches)``, then
    ``next()`` as often as needed; ``state_dict()`` at any time. The first ``next`` starts the underlying loader
    (creating its iterator draws the DataLoader's base seed from torch's global generator, exactly as
    ``iter(loader)`` does — detectron2's trainer does it in its first step). A stream that loaded a state or sought
    past batch 0 takes that draw on a copy of the generator: it leaves the global RNG untouched, so the engine may
    restore the checkpoint's RNG states before or after its first ``next``. (A state taken before the first batch,
    or ``seek(0)``, leaves a fresh stream, which draws for real as the uninterrupted run did after that point:
    restore the RNG states before its first ``next``.)
    """

    def __iter__(self) -> Iterator[Any]: ...

    def __next__(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]:
        """This rank's position after the last batch handed out: small, picklable, loadable by
        ``torch.load(weights_only=True)`` (no tensors, no numpy arrays)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly after the batch at which ``state`` was taken; before the first ``next`` only.

        Raises:
            StreamStateError: when ``state`` cannot be honoured (names what changed); the stream then starts from
                its first batch, still without drawing from the global RNG.
        """
        ...

    def seek(self, num_batches: int) -> str | None:
        """Place the stream after its first ``num_batches`` batches from the count alone (for checkpoints without
        a stream state); before the first ``next`` only. Returns None when the result is exactly an uninterrupted
        run's stream, else one line saying what differs (for the engine to log as a warning)."""
        ...


class StreamStateError(ValueError):
    """A saved stream state that cannot be honoured by this stream; ``str()`` is one line naming what changed.

    Attributes:
        key: the setting that differs (``"dataset_size"``, ``"batch_size"``, ``"world_size"``, ...).
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


#: Labels of the settings a saved state must agree on, in the order they are checked.
CONFIG_LABELS = {
    "stream": "the kind of data stream",
    "world_size": "the number of processes",
    "rank": "this process' rank",
    "dataset_size": "the dataset size",
    "batch_size": "the batch size per process",
    "sampler": "the sampler class",
    "sampler_stream": "the sampler's index stream (its seed or arguments)",
    "num_workers": "the DataLoader's num_workers",
    "aspect_ratio_grouping": "aspect-ratio grouping",
    "chunk_size": "the workers' sharding chunk size",
}


def sampler_digest(sampler: Iterable[int], count: int = 64) -> str:
    """A short fingerprint of the first ``count`` indices ``sampler`` yields (iterates it once)."""
    head = list(itertools.islice(iter(sampler), count))
    return hashlib.sha1(repr(head).encode()).hexdigest()[:16]


def qualname(obj: Any) -> str:
    """``module.QualName`` of ``obj``'s class."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


class StreamBase:
    """Batch counting, the start-once rule, saved-settings checks and the base-seed draw, for every stream.

    Subclasses implement ``_start()`` (create the underlying iterator), ``_next_batch()``, ``_config()`` (the
    settings a saved state must agree on, keys of :data:`CONFIG_LABELS`), ``_state()``/``_load(state)`` (their own
    entries), ``_seek(num_batches)`` and, optionally, ``_reconcile(state)``.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._batches = 0
        self._started = False
        self._resumed = False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if not self._started:
            self._started = True
            self._start()
        batch = self._next_batch()
        self._batches += 1
        return batch

    @property
    def batches(self) -> int:
        """Batches handed out since the start of the run (a resumed stream counts those before the cut too)."""
        return self._batches

    def state_dict(self) -> dict[str, Any]:
        return {"stream": type(self).__name__, "version": 1, "batches": self._batches, "config": self._config()} | (
            self._state()
        )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._require_unstarted("load_state_dict")
        self._resumed = True  # even when refused: the stream then restarts, leaving the global RNG alone
        if isinstance(state, Mapping):
            self._reconcile(state)
        self._check_config(state)
        self._batches = int(state["batches"])
        # a state taken before the first batch: the uninterrupted run draws its base seed after it, so do we
        self._resumed = self._batches > 0
        self._load(state)

    def seek(self, num_batches: int) -> str | None:
        self._require_unstarted("seek")
        if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 0:
            raise ValueError(f"num_batches must be an int >= 0, got {num_batches!r}")
        self._batches = num_batches
        self._resumed = num_batches > 0
        return self._seek(num_batches)

    # ---------------------------------------------------------------- for subclasses
    def _start(self) -> None:
        raise NotImplementedError

    def _next_batch(self) -> Any:
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        return {}

    def _load(self, state: Mapping[str, Any]) -> None:
        return None

    def _reconcile(self, state: Mapping[str, Any]) -> None:
        """Before the settings are checked: adapt to a saved state where that keeps the stream exact."""
        return None

    def _seek(self, num_batches: int) -> str | None:
        raise NotImplementedError

    @contextlib.contextmanager
    def _base_seed_draw(self, generator: torch.Generator | None, state: bytes | None = None) -> Iterator[bytes]:
        """Around creating a DataLoader iterator (which draws its base seed from ``generator``, torch's global one
        when None): a fresh stream draws for real; a resumed one draws from ``state`` (the generator state the
        uninterrupted run drew from, when known) on a copy, leaving the generator as it was. Yields the state the
        draw starts from (bytes)."""
        gen = torch.default_generator if generator is None else generator
        now = gen.get_state()
        start = now if state is None else torch.frombuffer(bytearray(state), dtype=torch.uint8)
        gen.set_state(start)
        try:
            yield start.numpy().tobytes()
        finally:
            if self._resumed:
                gen.set_state(now)

    def _require_unstarted(self, what: str) -> None:
        if self._started:
            raise RuntimeError(f"{type(self).__name__}.{what} must be called before the first next()")

    def _check_config(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or "config" not in state or "batches" not in state:
            raise StreamStateError("stream", f"not a data-stream state (keys: {sorted(state)[:6]}) for {self.name}")
        saved = {"stream": state.get("stream"), **state["config"]}
        current = {"stream": type(self).__name__, **self._config()}
        for key, label in CONFIG_LABELS.items():
            if key in current and saved.get(key) != current[key]:
                raise StreamStateError(
                    key,
                    f"{label} changed from {saved.get(key)!r} to {current[key]!r} since the checkpoint was written: "
                    f"{self.name} cannot continue where it stopped",
                )

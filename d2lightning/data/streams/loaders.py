"""Streams over loaders that already know how to resume: d2lightning's own train loader, and stateful loaders.

* :class:`StartIterationStream` — a loader with ``set_start_iteration(n)`` (d2lightning's
  ``build_detection_train_loader``): its sampler skips indices, and its workers seed every item from its position
  in the stream, so the position alone is exact.
* :class:`StatefulLoaderStream` — a loader with ``state_dict()``/``load_state_dict()`` (torchdata's
  ``StatefulDataLoader``): its own state is passed through.
* :class:`SeekableLoaderStream` — any other loader with ``set_start_iteration(n)``: the batch count.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from d2lightning.data.streams.base import StreamBase, StreamStateError, qualname, sampler_digest
from d2lightning.utils import comm

__all__ = ["SeekableLoaderStream", "StartIterationStream", "StatefulLoaderStream"]

logger = logging.getLogger(__name__)


class SeekableLoaderStream(StreamBase):
    """Any loader with ``set_start_iteration(n)`` (the loader promises that its stream then starts at batch ``n``,
    exactly as an uninterrupted one would continue): its state is the batch count.

    Args:
        loader: an iterable with ``set_start_iteration(n)``.
    """

    def __init__(self, loader: Any) -> None:
        super().__init__(f"the seekable loader {qualname(loader)}")
        self._loader = loader
        self._it: Any = None
        self._settings: dict[str, Any] = {"world_size": comm.get_world_size(), "rank": comm.get_rank()}

    def _config(self) -> dict[str, Any]:
        return dict(self._settings)

    def _load(self, state: Mapping[str, Any]) -> None:
        self._loader.set_start_iteration(self._batches)

    def _seek(self, num_batches: int) -> str | None:
        self._loader.set_start_iteration(num_batches)
        return None

    def _start(self) -> None:
        self._it = iter(self._loader)

    def _next_batch(self) -> Any:
        return next(self._it)


class StartIterationStream(SeekableLoaderStream):
    """The stream of d2lightning's own train loader; exact from the batch count alone.

    Its state is the batch count and the settings it must agree on. Items mapped in the main process (no workers)
    draw from the global generators, which the engine restores; items mapped in workers draw from generators
    seeded by their stream position (see ``d2lightning.data.build``).

    Args:
        loader: d2lightning's ``build_detection_train_loader`` result (has ``set_start_iteration``).
    """

    def __init__(self, loader: Any) -> None:
        super().__init__(loader)
        self.name = f"d2lightning's train loader ({qualname(loader)})"
        sampler = loader.dataset.sampler
        self._settings.update(
            dataset_size=len(loader.dataset.dataset),
            batch_size=int(loader.batch_size),
            sampler=qualname(sampler),
            sampler_stream=sampler_digest(sampler),  # before any seek: the sampler's own start
            num_workers=int(loader.num_workers),
        )

    def _start(self) -> None:
        with self._base_seed_draw(self._loader.generator):
            self._it = iter(self._loader)


class StatefulLoaderStream(StreamBase):
    """A loader that saves and loads its own position (``state_dict``/``load_state_dict``), passed through.

    The state is ``{"loader": loader.state_dict(), ...}`` taken after the last batch handed out. ``seek`` cannot
    place such a loader without loading the batches before the cut, so it leaves it at its start and says so.

    Args:
        loader: an iterable with ``state_dict()`` and ``load_state_dict(state)`` (torchdata's ``StatefulDataLoader``).
    """

    def __init__(self, loader: Any) -> None:
        super().__init__(f"the stateful loader {qualname(loader)}")
        self._loader = loader
        self._it: Any = None
        self._world = comm.get_world_size()
        self._rank = comm.get_rank()

    def _config(self) -> dict[str, Any]:
        return {"world_size": self._world, "rank": self._rank}

    def _state(self) -> dict[str, Any]:
        return {"loader": self._loader.state_dict()}

    def _load(self, state: Mapping[str, Any]) -> None:
        if "loader" not in state:
            raise StreamStateError("stream", f"the saved state has no 'loader' entry for {self.name}")
        self._loader.load_state_dict(state["loader"])
        if getattr(self._loader, "generator", None) is not None:
            logger.warning(
                f"{self.name} has its own generator=, whose state its state_dict does not fully restore: the epochs "
                "after the resumed one are shuffled differently from an uninterrupted run. Leave generator=None: "
                "the global generator is restored with the checkpoint"
            )

    def _seek(self, num_batches: int) -> str | None:
        if num_batches == 0:
            return None
        return (
            f"{self.name} restarts from its first batch: the checkpoint holds no state of it, and it cannot skip "
            f"{num_batches} batches without loading them (save its state_dict in the checkpoint to resume exactly)"
        )

    def _start(self) -> None:
        if getattr(self._loader, "generator", None) is not None:
            # its own generator is part of its own state (restored by load_state_dict, not by a copy here)
            self._it = iter(self._loader)
            return
        # a resumed loader draws its base seed again when it restarts: on a copy of the global generator, which the
        # uninterrupted run did not draw from at this point
        with self._base_seed_draw(None):
            self._it = iter(self._loader)

    def _next_batch(self) -> Any:
        return next(self._it)

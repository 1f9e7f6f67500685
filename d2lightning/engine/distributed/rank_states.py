"""Every rank's random streams in a trainer's checkpoints: RNG states and the position of its data stream.

No detectron2 counterpart (detectron2 saves neither, so a resumed run draws other random numbers and restarts its
data stream). A trainer's ``state_dict`` gets two entries that detectron2 ignores when it loads the file:

* ``"rng"``: this process's RNG states (python, numpy, torch, CUDA) and, under ``"ranks"``, every rank's;
* ``"data"``: ``{"world_size": W, "ranks": [state of rank 0, ...]}``, each rank's data-stream state
  (:mod:`d2lightning.data.streams`), None where unknown.

Every rank's states reach the file written by the main process through :meth:`RankStates.gather`, a collective the
fit's run calls on every rank at each iteration where some rank's hook saves a checkpoint (the ranks agree on those
iterations once, when training starts), so a checkpointer registered on the main process only — as detectron2's own
scripts register it — still saves what every rank needs to continue exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from d2lightning.utils import comm
from d2lightning.utils.env import get_rng_states

__all__ = ["RankStates"]

logger = logging.getLogger(__name__)


class RankStates:
    """The RNG and data-stream states of every rank for one trainer's checkpoints, and those waiting to be restored.

    Example::

        states.gather(iteration, data_state)       # every rank, before the main process saves this iteration
        checkpoint.update(states.entries(iteration, data_state))
        ...
        states.load(checkpoint)                      # at resume
        rng, data = states.take_mine()
    """

    def __init__(self) -> None:
        self._gathered: tuple[int, list[dict[str, Any]]] | None = None
        self._pending: dict[str, Any] | None = None

    def gather(self, iteration: int, data_state: Mapping[str, Any] | None) -> None:
        """Collect every rank's states for the checkpoints of ``iteration`` (collective: call it on every rank; once
        per iteration, further calls for the same iteration do nothing). A no-op in a single process."""
        if comm.get_world_size() == 1 or (self._gathered is not None and self._gathered[0] == iteration):
            return
        mine = {"rng": get_rng_states(), "data": None if data_state is None else dict(data_state)}
        self._gathered = (iteration, comm.all_gather(mine))

    def entries(self, iteration: int, data_state: Mapping[str, Any] | None) -> dict[str, Any]:
        """The ``"rng"`` and ``"data"`` entries of a checkpoint of ``iteration`` written by this process."""
        rng: dict[str, Any] = get_rng_states()
        world, rank = comm.get_world_size(), comm.get_rank()
        ranks_data: list[Any] = [None] * world
        ranks_data[rank] = None if data_state is None else dict(data_state)
        if self._gathered is not None and self._gathered[0] == iteration:
            everyone = self._gathered[1]
            rng["ranks"] = [s["rng"] for s in everyone]
            ranks_data = [s["data"] for s in everyone]
        out = {"rng": rng}
        if any(s is not None for s in ranks_data):
            out["data"] = {"world_size": world, "ranks": ranks_data}
        return out

    def load(self, state_dict: Mapping[str, Any]) -> None:
        """Keep the checkpoint's ``"rng"`` and ``"data"`` entries until training starts (:meth:`take_mine`)."""
        self._pending = {"rng": state_dict.get("rng"), "data": state_dict.get("data")}

    def take_mine(self) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None, bool]:
        """This rank's saved RNG states and data-stream state (None where the checkpoint has none for it), and
        whether the checkpoint had a data entry at all; forgets them."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None, None, False
        data = pending.get("data")
        return _rng_of_this_rank(pending.get("rng")), _data_of_this_rank(data), data is not None


def _rng_of_this_rank(saved: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if saved is None:
        return None
    per_rank = saved.get("ranks")
    rank, world = comm.get_rank(), comm.get_world_size()
    if per_rank is not None:
        if len(per_rank) == world:
            return per_rank[rank]
        logger.warning(
            f"The checkpoint holds RNG states of {len(per_rank)} processes, this run has {world}: every process "
            "keeps its own seeded random stream"
        )
        return None
    if rank == 0:
        return saved
    logger.warning(
        f"The checkpoint holds the RNG states of the main process only: process {rank} keeps its own seeded random "
        "stream, so its random draws differ from an uninterrupted run"
    )
    return None


def _data_of_this_rank(saved: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if saved is None:
        return None
    ranks = saved.get("ranks") or []
    rank, world = comm.get_rank(), comm.get_world_size()
    if saved.get("world_size") != world:
        logger.warning(
            f"The checkpoint holds the data-stream positions of {saved.get('world_size')} processes, this run has "
            f"{world}: the data streams are placed from the iteration instead"
        )
        return None
    return ranks[rank] if rank < len(ranks) else None

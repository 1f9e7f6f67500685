"""d2lightning.utils.comm: detectron2's comm helpers, alone and across 2 gloo processes started by launch."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

from d2lightning.engine.launch import ensure_local_process_group, launch
from d2lightning.utils import comm
from tests.helpers.distributed import read_results, without_launcher_variables, write_result

# np.random.RandomState(0).randint(2**31): what rank 0 draws after np.random.seed(0).
SEED_OF_RANK_0 = 209652396


# ---- one process, no process group ---------------------------------------------------------------------


def test_single_process_values() -> None:
    assert (comm.get_world_size(), comm.get_rank(), comm.get_local_rank(), comm.get_local_size()) == (
        1,
        0,
        0,
        1,
    )
    assert comm.is_main_process() is True
    comm.synchronize()  # a no-op, must not raise
    assert comm.all_gather({"a": 1}) == [{"a": 1}]
    assert comm.gather("x") == ["x"]
    values = {"loss": torch.tensor(2.0)}
    assert comm.reduce_dict(values) is values


def test_single_process_shared_random_seed() -> None:
    np.random.seed(0)
    assert comm.shared_random_seed() == SEED_OF_RANK_0


def test_single_process_local_group() -> None:
    comm.create_local_process_group(1)  # nothing to create without a process group
    with pytest.raises(RuntimeError, match="Local process group is not yet created"):
        comm.get_local_process_group()
    with pytest.raises(ValueError, match="num_workers_per_machine=2 must be >= 1 and divide the world size 1"):
        comm.create_local_process_group(2)
    with pytest.raises(ValueError, match="num_workers_per_machine must be an int >= 1, got 0"):
        comm.create_local_process_group(0)
    with pytest.raises(TypeError, match="num_workers_per_machine must be an int >= 1, got '"):
        comm.create_local_process_group("1")  # type: ignore[arg-type]


# ---- two gloo processes --------------------------------------------------------------------------------


def comm_worker(out_dir: str) -> None:
    """Exercise every helper on both ranks; record the results."""
    rank = comm.get_rank()
    marker = Path(out_dir, f"before-barrier-{rank}")
    if rank == 1:
        marker.write_text("1")
    comm.synchronize()
    saw_rank1_marker = Path(out_dir, "before-barrier-1").exists()

    np.random.seed(rank)
    result: dict[str, Any] = {
        "world": comm.get_world_size(),
        "rank": rank,
        "local": [comm.get_local_rank(), comm.get_local_size()],
        "main": comm.is_main_process(),
        "saw_rank1_marker": saw_rank1_marker,
        "all_gather": comm.all_gather({"rank": rank}),
        "all_gather_local": comm.all_gather(rank * 10, group=comm.get_local_process_group()),
        "gather_to_0": comm.gather(rank * 10),
        "gather_to_1": comm.gather(rank, dst=1),
        "seed": comm.shared_random_seed(),
    }
    values = {"b": torch.tensor(float(rank + 1)), "a": torch.tensor(2.0 * (rank + 1))}
    averaged = comm.reduce_dict(values)
    summed = comm.reduce_dict({"b": torch.tensor(float(rank + 1)), "a": torch.tensor(2.0 * (rank + 1))}, False)
    result["reduce_keys"] = list(averaged)
    if rank == 0:
        result["averaged"] = {k: v.item() for k, v in averaged.items()}
        result["summed"] = {k: v.item() for k, v in summed.items()}

    comm.create_local_process_group(2)  # same size again: nothing happens
    try:
        comm.create_local_process_group(1)
    except ValueError as exc:
        result["resize_error"] = str(exc)

    # The default group is replaced (as when Lightning initialises its own): the old local group is stale.
    dist.destroy_process_group()
    result["after_destroy"] = [comm.get_world_size(), comm.get_local_rank(), comm.get_local_size()]
    init = f"file://{Path(out_dir, 'rendezvous')}"
    dist.init_process_group("gloo", init_method=init, world_size=2, rank=rank, timeout=timedelta(seconds=60))
    try:
        comm.get_local_rank()
    except RuntimeError as exc:
        result["stale_error"] = str(exc).split("!")[0]
    ensure_local_process_group()  # the size comes from what launch set up: 2 per machine
    result["after_ensure"] = [comm.get_local_rank(), comm.get_local_size(), comm.all_gather(rank)]
    write_result(out_dir, rank, result)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("comm")
    with without_launcher_variables():
        launch(comm_worker, 2, dist_url="auto", args=(str(out),))
    return read_results(out, 2)


def test_ranks_sizes_and_local_group(two_ranks: list[dict[str, Any]]) -> None:
    assert [(r["world"], r["rank"], r["local"], r["main"]) for r in two_ranks] == [
        (2, 0, [0, 2], True),
        (2, 1, [1, 2], False),
    ]


def test_synchronize_is_a_barrier(two_ranks: list[dict[str, Any]]) -> None:
    assert [r["saw_rank1_marker"] for r in two_ranks] == [True, True]


def test_all_gather(two_ranks: list[dict[str, Any]]) -> None:
    for r in two_ranks:
        assert r["all_gather"] == [{"rank": 0}, {"rank": 1}]
        assert r["all_gather_local"] == [0, 10]


def test_gather_returns_empty_list_off_destination(two_ranks: list[dict[str, Any]]) -> None:
    assert [r["gather_to_0"] for r in two_ranks] == [[0, 10], []]
    assert [r["gather_to_1"] for r in two_ranks] == [[], [0, 1]]


def test_shared_random_seed_is_rank_0s(two_ranks: list[dict[str, Any]]) -> None:
    assert [r["seed"] for r in two_ranks] == [SEED_OF_RANK_0, SEED_OF_RANK_0]


def test_reduce_dict_to_rank_0_sorted_keys(two_ranks: list[dict[str, Any]]) -> None:
    assert [r["reduce_keys"] for r in two_ranks] == [["a", "b"], ["a", "b"]]
    assert two_ranks[0]["averaged"] == {"a": 3.0, "b": 1.5}
    assert two_ranks[0]["summed"] == {"a": 6.0, "b": 3.0}


def test_local_group_is_created_once(two_ranks: list[dict[str, Any]]) -> None:
    for r in two_ranks:
        assert r["resize_error"].startswith("num_workers_per_machine=1 differs from the existing local process")


def test_local_group_follows_the_default_group(two_ranks: list[dict[str, Any]]) -> None:
    for rank, r in enumerate(two_ranks):
        assert r["after_destroy"] == [1, 0, 1]
        assert r["stale_error"] == "Local process group is not yet created"
        assert r["after_ensure"] == [rank, 2, [0, 1]]

"""launch() with a real training job: SimpleTrainer.train joins the launched group through Lightning's DDP."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from d2lightning.engine import launch
from tests.helpers.distributed import free_port, read_results, without_launcher_variables
from tests.jobs.dist_training_job import train_simple_trainer


@pytest.mark.parametrize("wrap", [False, True], ids=["lightning-wraps", "create_ddp_model"])
def test_two_process_simple_trainer_run(tmp_path: Path, wrap: bool) -> None:
    with without_launcher_variables():
        launch(train_simple_trainer, 2, dist_url=f"tcp://127.0.0.1:{free_port()}", args=(str(tmp_path), wrap))
    r0, r1 = read_results(tmp_path, 2)
    for rank, r in enumerate((r0, r1)):
        assert (r["rank"], r["world_size"], r["pl_world"]) == (rank, 2, 2)
        assert (r["iter"], r["global_step"]) == (6, 6)
    # gradients were averaged across ranks (different data per rank): identical weights everywhere
    assert r0["weight"] == pytest.approx(r1["weight"], abs=0)
    # only the main process wrote checkpoints and metrics; total_loss is put on rank 0 only (detectron2)
    names = [f for f in r0["files"] if not f.startswith("events.out.tfevents")]
    assert names == ["last_checkpoint", "metrics.json", "model_0000002.pth", "model_0000005.pth", "model_final.pth"]
    assert r0["has_total_loss"] and not r1["has_total_loss"]
    assert multiprocessing.active_children() == []


@pytest.mark.requires_detectron2
def test_detectron2_comm_sees_the_local_group_under_launch(tmp_path: Path) -> None:
    from tests.jobs.dist_training_job import detectron2_local_rank

    pytest.importorskip("detectron2", reason="detectron2 is not installed")
    with without_launcher_variables():
        launch(detectron2_local_rank, 2, dist_url=f"tcp://127.0.0.1:{free_port()}", args=(str(tmp_path),))
    assert read_results(tmp_path, 2) == [{"local_rank": 0, "local_size": 2}, {"local_rank": 1, "local_size": 2}]

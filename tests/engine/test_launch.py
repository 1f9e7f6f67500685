"""d2lightning.engine.launch: detectron2's ``launch`` on CPU/gloo, and joining srun / torchrun processes.

Distributed runs are real processes (spawned by ``launch``, or by srun/torchrun in a subprocess); workers
write their findings to ``rank{R}.json`` files that the test then reads.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from d2lightning.engine.launch import DEFAULT_TIMEOUT, ensure_local_process_group, launch
from d2lightning.utils import comm
from tests.helpers import REPO
from tests.helpers.distributed import (
    ENV_KEYS,
    LAUNCHER_VARS,
    free_port,
    read_results,
    without_launcher_variables,
    write_result,
)
from tests.helpers.slurm_cluster import require_slurm

JOB = REPO / "tests" / "jobs" / "launch_job.py"


@pytest.fixture(autouse=True)
def _no_launcher_variables() -> Iterator[None]:
    with without_launcher_variables():
        yield


def _child_pids() -> set[int]:
    """PIDs whose parent is this process (from /proc), multiprocessing's resource tracker excluded."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"resource_tracker" not in cmdline:
            pids.add(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ---- worker functions (module level: spawned workers import them) --------------------------------------


def record_worker(out_dir: str, tag: str) -> None:
    from d2lightning.engine.launch import detect_cluster_environment

    env = detect_cluster_environment()
    write_result(
        out_dir,
        comm.get_rank(),
        {
            "tag": tag,
            "rank": comm.get_rank(),
            "world_size": comm.get_world_size(),
            "local_rank": comm.get_local_rank(),
            "local_size": comm.get_local_size(),
            "backend": str(dist.get_backend()),
            "env": {k: os.environ.get(k) for k in ENV_KEYS},
            "detected": None if env is None else env.__dict__,
            "pid": os.getpid(),
        },
    )


def failing_worker(out_dir: str, peer: str) -> None:
    """Rank 1 raises; rank 0 waits in a barrier or sleeps (and must be stopped)."""
    write_result(out_dir, comm.get_rank(), {"pid": os.getpid()})
    if comm.get_rank() == 1:
        time.sleep(0.5)  # let rank 0 reach its barrier / sleep first
        raise ValueError("boom from rank 1")
    if peer == "barrier":
        comm.synchronize()
    else:
        time.sleep(60)
    Path(out_dir, "rank0-finished").write_text("rank 0 was not stopped")


def lightning_worker(out_dir: str) -> None:
    """Fit a tiny module with Lightning's DDP on rank-dependent data; record ranks and final weights."""
    import lightning.pytorch as pl

    from d2lightning.engine.launch import lightning_cluster_environment

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            return self.layer(batch).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    group_before = dist.group.WORLD
    torch.manual_seed(0)
    model = Tiny()
    initial = model.layer.weight.detach().clone()
    data = torch.randn(12, 4, generator=torch.Generator().manual_seed(100 + comm.get_rank()))
    plugin = lightning_cluster_environment()
    trainer = pl.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        num_nodes=1,
        max_steps=3,
        plugins=[plugin] if plugin is not None else None,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4))
    write_result(
        out_dir,
        comm.get_rank(),
        {
            "global_rank": trainer.global_rank,
            "local_rank": trainer.local_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "same_group": dist.group.WORLD is group_before,
            "environment": type(trainer.strategy.cluster_environment).__name__,
            "moved": not torch.equal(initial, model.layer.weight.detach()),
            "weight": model.layer.weight.detach().flatten().tolist(),
            "pid": os.getpid(),
        },
    )


# ---- argument validation ---------------------------------------------------------------------------------


def _never_called(*args: Any) -> None:
    raise AssertionError("main_func must not run")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_gpus_per_machine": 2, "num_machines": 2, "dist_url": "auto"}, ValueError, "dist_url='auto'"),
        ({"num_gpus_per_machine": 2, "dist_url": "tcp://127.0.0.1"}, ValueError, "needs a host and a port"),
        ({"num_gpus_per_machine": 2, "dist_url": "tcp://:1234"}, ValueError, "needs a host and a port"),
        ({"num_gpus_per_machine": 2, "dist_url": "tcp://h:70000"}, ValueError, "needs a host and a port"),
        (
            {"num_gpus_per_machine": 2, "dist_url": "udp://h:1234"},
            ValueError,
            "'udp://h:1234' is not supported",
        ),
        ({"num_gpus_per_machine": 2, "dist_url": "file:///tmp/f"}, ValueError, "is not supported"),
        ({"num_gpus_per_machine": 2, "dist_url": "env://"}, ValueError, "needs the MASTER_ADDR"),
        ({"num_gpus_per_machine": 2, "dist_url": 8686}, TypeError, "dist_url must be a str"),
        ({"num_gpus_per_machine": 2, "num_machines": 2}, ValueError, "dist_url=None with num_machines=2"),
        (
            {"num_gpus_per_machine": 2, "num_machines": 2, "machine_rank": 2},
            ValueError,
            "machine_rank=2 must be <",
        ),
        ({"num_gpus_per_machine": 0}, ValueError, "num_gpus_per_machine must be an int >= 1, got 0"),
        ({"num_gpus_per_machine": -1}, ValueError, "num_gpus_per_machine must be an int >= 1, got -1"),
        ({"num_gpus_per_machine": 1, "num_machines": 0}, ValueError, "num_machines must be an int >= 1, got 0"),
        ({"num_gpus_per_machine": 1, "machine_rank": -1}, ValueError, "machine_rank must be an int >= 0, got -1"),
        ({"num_gpus_per_machine": 2.0}, TypeError, "num_gpus_per_machine must be an int >= 1, got 2.0"),
        ({"num_gpus_per_machine": True}, TypeError, "num_gpus_per_machine must be an int >= 1, got True"),
        ({"num_gpus_per_machine": 1, "timeout": 30}, TypeError, "timeout must be a datetime.timedelta"),
        ({"num_gpus_per_machine": 1, "timeout": timedelta(0)}, ValueError, "must be positive"),
        ({"num_gpus_per_machine": 1, "args": "abc"}, TypeError, "args must be a tuple or list"),
    ],
)
def test_bad_arguments_raise_before_anything_starts(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        launch(_never_called, **kwargs)
    assert multiprocessing.active_children() == []
    assert not dist.is_initialized()


def test_main_func_must_be_callable() -> None:
    with pytest.raises(TypeError, match="main_func must be callable, got str"):
        launch("main", 1)  # type: ignore[arg-type]


def test_more_processes_than_gpus_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="num_gpus_per_machine=2 exceeds the 1 CUDA devices present"):
        launch(_never_called, 2)


def test_default_timeout_is_30_minutes() -> None:
    assert timedelta(minutes=30) == DEFAULT_TIMEOUT


# ---- world size 1 --------------------------------------------------------------------------------------


def test_world_size_one_runs_in_this_process() -> None:
    calls: list[tuple[Any, ...]] = []
    assert launch(lambda *a: calls.append((os.getpid(), *a)), 1, args=("x", 2)) is None
    assert calls == [(os.getpid(), "x", 2)]
    assert not dist.is_initialized()
    assert "LOCAL_RANK" not in os.environ
    assert multiprocessing.active_children() == []


# ---- spawned workers -------------------------------------------------------------------------------------


def test_two_cpu_workers_on_gloo(tmp_path: Path) -> None:
    port = free_port()
    launch(record_worker, 2, dist_url=f"tcp://127.0.0.1:{port}", args=(str(tmp_path), "spawned"))
    results = read_results(tmp_path, 2)
    for rank, result in enumerate(results):
        assert result["tag"] == "spawned"
        assert (result["rank"], result["world_size"], result["local_rank"], result["local_size"]) == (
            rank,
            2,
            rank,
            2,
        )
        assert result["backend"] == "gloo"
        assert result["env"] == {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": "2",
            "NODE_RANK": "0",
        }
        assert result["detected"] == {
            "launcher": "d2lightning",
            "world_size": 2,
            "rank": rank,
            "local_rank": rank,
            "local_world_size": 2,
            "node_rank": 0,
            "num_nodes": 1,
            "master_addr": "127.0.0.1",
            "master_port": port,
        }
    assert len({r["pid"] for r in results} | {os.getpid()}) == 3
    assert multiprocessing.active_children() == []
    assert "LOCAL_RANK" not in os.environ  # the parent's environment is untouched


@pytest.mark.parametrize("peer", ["barrier", "sleep"])
def test_failing_worker_raises_in_parent_and_stops_the_others(tmp_path: Path, peer: str) -> None:
    children_before = _child_pids()
    with pytest.raises(mp.ProcessRaisedException) as info:
        launch(failing_worker, 2, args=(str(tmp_path), peer), timeout=timedelta(seconds=120))
    message = str(info.value)
    assert "-- Process 1 " in message
    assert "Traceback (most recent call last)" in message
    assert 'raise ValueError("boom from rank 1")' in message
    assert message.rstrip().endswith("ValueError: boom from rank 1")
    assert info.value.error_index == 1
    pids = [r["pid"] for r in read_results(tmp_path, 2)]
    assert [pid for pid in pids if _alive(pid)] == []
    assert multiprocessing.active_children() == []
    assert _child_pids() - children_before == set()
    assert not (tmp_path / "rank0-finished").exists()


ONE_SRUN_TASK = {
    "SLURM_NTASKS": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NNODES": "1",
    "SLURM_TASKS_PER_NODE": "1",
    "SLURM_NODELIST": "localhost",
    "SLURM_JOB_ID": "5",
    "SLURM_JOB_NAME": "train",
    "SLURM_STEP_ID": "0",
}


@pytest.mark.parametrize("enclosing", [{}, ONE_SRUN_TASK], ids=["plain", "inside-one-srun-task"])
def test_lightning_ddp_joins_the_launched_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, enclosing: dict[str, str]
) -> None:
    """Inside one srun task Lightning would read SLURM's ranks (world 1); the plugin keeps it on launch's."""
    for key, value in enclosing.items():
        monkeypatch.setenv(key, value)
    launch(lightning_worker, 2, dist_url="auto", args=(str(tmp_path),))
    results = read_results(tmp_path, 2)
    assert [(r["global_rank"], r["local_rank"], r["world_size"]) for r in results] == [(0, 0, 2), (1, 1, 2)]
    assert [r["global_step"] for r in results] == [3, 3]
    assert [r["same_group"] for r in results] == [True, True]  # Lightning did not re-initialise it
    assert [r["environment"] for r in results] == ["LightningEnvironment", "LightningEnvironment"]
    assert [r["moved"] for r in results] == [True, True]
    assert results[0]["weight"] == results[1]["weight"]  # different data per rank, synchronised gradients
    assert len({r["pid"] for r in results}) == 2  # Lightning started no process of its own


# ---- processes made by another launcher ------------------------------------------------------------------


def _plain_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def _check_joined(results: list[dict[str, Any]], launcher: str, addr: str, port: int) -> None:
    for rank, result in enumerate(results):
        assert (result["rank"], result["world_size"], result["local_rank"], result["local_size"]) == (
            rank,
            2,
            rank,
            2,
        )
        assert result["sum"] == 3.0
        assert result["detected"]["launcher"] == launcher
        assert (result["env"]["MASTER_ADDR"], result["env"]["MASTER_PORT"]) == (addr, str(port))
        assert (result["env"]["RANK"], result["env"]["LOCAL_WORLD_SIZE"]) == (str(rank), "2")


@pytest.mark.parametrize("dist_url", [None, "tcp://127.0.0.1:49152"], ids=["no-url", "default-url-ignored"])
def test_joins_processes_made_by_torchrun(tmp_path: Path, dist_url: str | None) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port)]
    env = _plain_env()
    if dist_url is not None:  # torchrun's rendezvous wins over a script's (default) --dist-url
        env["D2L_TEST_DIST_URL"] = dist_url
    proc = subprocess.run([*cmd, str(JOB), str(tmp_path), "2"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_joined(read_results(tmp_path, 2), "torchelastic", "127.0.0.1", port)


def test_joins_srun_tasks_from_their_variables(tmp_path: Path) -> None:
    """The SLURM path without a cluster: two processes with the variables srun -n2 sets on one node."""
    port = free_port(15000, 25000)
    job_id = f"9{port - 15000:04d}"  # Lightning's rule: port = 15000 + last 4 digits of the job id
    procs = [
        subprocess.Popen(
            [sys.executable, str(JOB), str(tmp_path), "2"],
            env=_plain_env(
                SLURM_NTASKS="2",
                SLURM_PROCID=str(rank),
                SLURM_LOCALID=str(rank),
                SLURM_NODEID="0",
                SLURM_NNODES="1",
                SLURM_STEP_TASKS_PER_NODE="2",
                SLURM_TASKS_PER_NODE="2",
                SLURM_NODELIST="localhost",
                SLURM_JOB_ID=job_id,
                SLURM_JOB_NAME="train",
                SLURM_STEP_ID="0",
            ),
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    results = read_results(tmp_path, 2)
    _check_joined(results, "slurm", "localhost", port)
    for result in results:
        assert result["env"]["SLURM_NTASKS_PER_NODE"] == "2"  # exported so that Lightning accepts the step


_SLURM_STEP = {
    "SLURM_NTASKS": "2",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NNODES": "1",
    "SLURM_TASKS_PER_NODE": "2",
    "SLURM_NODELIST": "localhost",
    "SLURM_JOB_ID": "77",
    "SLURM_JOB_NAME": "train",
    "SLURM_STEP_ID": "0",
}


@pytest.mark.parametrize(
    ("variables", "num_gpus", "error", "message"),
    [
        (_SLURM_STEP, 1, ValueError, "slurm already started 2 processes .* pass num_gpus_per_machine=2"),
        (_SLURM_STEP, 4, ValueError, "slurm already started 2 processes"),
        ({**_SLURM_STEP, "SLURM_STEP_ID": ""}, 2, None, None),
        (
            {
                **_SLURM_STEP,
                "SLURM_NTASKS": "4",
                "SLURM_NNODES": "2",
                "SLURM_PROCID": "1",
                "SLURM_LOCALID": "0",
                "SLURM_NODEID": "1",
                "SLURM_TASKS_PER_NODE": "2(x2)",
            },
            2,
            ValueError,
            "gave rank 1 to local rank 0 of node 1",
        ),
        (
            {
                "TORCHELASTIC_RUN_ID": "x",
                "WORLD_SIZE": "2",
                "RANK": "0",
                "LOCAL_RANK": "0",
                "LOCAL_WORLD_SIZE": "2",
            },
            1,
            ValueError,
            "torchelastic already started 2 processes",
        ),
    ],
)
def test_mismatch_with_the_detected_launcher(
    monkeypatch: pytest.MonkeyPatch,
    variables: dict[str, str],
    num_gpus: int,
    error: type[Exception] | None,
    message: str | None,
) -> None:
    for key, value in variables.items():
        if value:
            monkeypatch.setenv(key, value)
    num_machines = int(variables.get("SLURM_NNODES", "1"))
    kwargs = {"num_machines": num_machines, "dist_url": "tcp://127.0.0.1:1" if num_machines > 1 else None}
    if error is None:  # the batch script itself, not an srun task
        with pytest.raises(RuntimeError, match="not one of them: start the training with `srun python"):
            launch(_never_called, num_gpus, **kwargs)
    else:
        with pytest.raises(error, match=message):
            launch(_never_called, num_gpus, **kwargs)
    assert not dist.is_initialized()
    assert multiprocessing.active_children() == []


def test_ensure_local_process_group_without_a_group_does_nothing() -> None:
    ensure_local_process_group(2)
    assert comm.get_local_size() == 1


@pytest.mark.slurm
def test_launch_joins_real_srun_tasks(tmp_path: Path) -> None:
    """`srun -n2 python launch_job.py`: launch starts nothing and both srun tasks agree on one group."""
    require_slurm()
    proc = subprocess.run(
        ["srun", "-n2", "--kill-on-bad-exit=1", sys.executable, str(JOB), str(tmp_path), "2", "lightning"],
        env=_plain_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(tmp_path, 2)
    job_id = results[0]["env"]["SLURM_JOB_ID"]
    port = 15000 + int(job_id[-4:])
    _check_joined(results, "slurm", socket.gethostname().split(".")[0], port)
    assert results[1]["env"]["SLURM_JOB_ID"] == job_id
    for rank, result in enumerate(results):
        assert result["env"]["SLURM_NTASKS_PER_NODE"] == "2"
        assert result["lightning"] == {  # Lightning's SLURMEnvironment reads the same run (and accepts it)
            "main_address": socket.gethostname().split(".")[0],
            "main_port": port,
            "global_rank": rank,
            "local_rank": rank,
            "world_size": 2,
            "node_rank": 0,
        }


def test_first_failure_is_the_earliest_record(tmp_path: Path) -> None:
    import pickle

    from d2lightning.engine.distributed.workers import _first_failure

    assert _first_failure(str(tmp_path)) is None
    for index, when in ((0, 12.5), (1, 11.0), (2, 13.0)):
        (tmp_path / f"{index}.pkl").write_bytes(pickle.dumps({"time": when, "index": index, "pid": 1, "tb": ""}))
    (tmp_path / ".3.tmp").write_bytes(b"half-written")
    first = _first_failure(str(tmp_path))
    assert first is not None
    assert first["index"] == 1

"""d2lightning.engine.distributed.cluster: which launcher made this process, read as Lightning 2.6 reads it."""

from __future__ import annotations

import pytest
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

from d2lightning.engine.distributed.cluster import (
    DistributedEnvironment,
    detect_cluster_environment,
    first_slurm_host,
    lightning_cluster_environment,
    slurm_default_port,
)

# `srun -N2 --ntasks-per-node=2` task 3 of job 4242, as Slurm 22.05 sets it.
SLURM_TASK_3 = {
    "SLURM_NTASKS": "4",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_NNODES": "2",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_NODELIST": "gpu[07-08]",
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "train",
    "SLURM_STEP_ID": "0",
}
TORCHRUN_RANK_1 = {
    "TORCHELASTIC_RUN_ID": "none",
    "WORLD_SIZE": "4",
    "RANK": "1",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "GROUP_RANK": "0",
    "MASTER_ADDR": "10.0.0.1",
    "MASTER_PORT": "29500",
}


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [
        ("vm", "vm"),
        ("node[1-3]", "node1"),
        ("gpu[03-05,9],cpu1", "gpu03"),
        ("a,b", "a"),
        ("host[7]", "host7"),
        ("h1 h2", "h1"),
        ("rack[1-2]-n[7-8]", "rack1-n7"),
    ],
)
def test_first_slurm_host(nodelist: str, host: str) -> None:
    assert first_slurm_host(nodelist) == host


@pytest.mark.parametrize("nodelist", ["vm", "node[1-3]", "gpu[03-05,9],cpu1", "a,b", "host[7]", "h1 h2"])
def test_first_slurm_host_agrees_with_lightning(nodelist: str) -> None:
    assert first_slurm_host(nodelist) == SLURMEnvironment.resolve_root_node_address(nodelist)


@pytest.mark.parametrize(("nodelist", "message"), [("", "names no host"), ("node[1-2", "unclosed")])
def test_first_slurm_host_rejects(nodelist: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        first_slurm_host(nodelist)


@pytest.mark.parametrize(("job_id", "port"), [("123456", 18456), ("7", 15007), ("4242", 19242), (None, 12910)])
def test_slurm_default_port(job_id: str | None, port: int) -> None:
    assert slurm_default_port(job_id) == port


def test_no_launcher_detected() -> None:
    assert detect_cluster_environment({"PATH": "/bin", "MASTER_PORT": "1234"}) is None
    assert detect_cluster_environment({"LOCAL_RANK": "0"}) is None  # no WORLD_SIZE: not a launcher's process


def test_slurm_detected() -> None:
    assert detect_cluster_environment(SLURM_TASK_3) == DistributedEnvironment(
        launcher="slurm",
        world_size=4,
        rank=3,
        local_rank=1,
        local_world_size=2,
        node_rank=1,
        num_nodes=2,
        master_addr="gpu07",
        master_port=19242,
    )


def test_slurm_agrees_with_lightning(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in SLURM_TASK_3.items():
        monkeypatch.setenv(key, value)
    for key in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    env = detect_cluster_environment(dict(SLURM_TASK_3))
    assert env is not None
    lightning = SLURMEnvironment(auto_requeue=False)
    assert (env.master_addr, env.master_port) == (lightning.main_address, lightning.main_port)
    assert (env.rank, env.local_rank, env.node_rank, env.world_size) == (
        lightning.global_rank(),
        lightning.local_rank(),
        lightning.node_rank(),
        lightning.world_size(),
    )
    lightning.validate_settings(num_devices=env.devices, num_nodes=env.num_nodes)  # raises on disagreement


def test_slurm_master_from_environment_wins() -> None:
    env = detect_cluster_environment({**SLURM_TASK_3, "MASTER_ADDR": "head", "MASTER_PORT": "23456"})
    assert env is not None
    assert (env.master_addr, env.master_port) == ("head", 23456)


def test_slurm_tasks_per_node_without_ntasks_per_node() -> None:
    environ = {k: v for k, v in SLURM_TASK_3.items() if k != "SLURM_NTASKS_PER_NODE"}
    env = detect_cluster_environment({**environ, "SLURM_STEP_TASKS_PER_NODE": "2(x2)"})
    assert env is not None
    assert (env.local_world_size, env.num_nodes) == (2, 2)


def test_slurm_uneven_tasks_per_node_rejected() -> None:
    environ = {k: v for k, v in SLURM_TASK_3.items() if k != "SLURM_NTASKS_PER_NODE"}
    with pytest.raises(ValueError, match=r"'2\(x2\),1' tasks on the nodes"):
        detect_cluster_environment({**environ, "SLURM_NTASKS": "5", "SLURM_STEP_TASKS_PER_NODE": "2(x2),1"})


@pytest.mark.parametrize("job_name", ["bash", "interactive"])
def test_interactive_slurm_job_is_not_a_launcher(job_name: str) -> None:
    assert detect_cluster_environment({**SLURM_TASK_3, "SLURM_JOB_NAME": job_name}) is None


def test_torchelastic_detected_before_slurm() -> None:
    env = detect_cluster_environment({**SLURM_TASK_3, **TORCHRUN_RANK_1})
    assert env == DistributedEnvironment(
        launcher="torchelastic",
        world_size=4,
        rank=1,
        local_rank=1,
        local_world_size=2,
        node_rank=0,
        num_nodes=2,
        master_addr="10.0.0.1",
        master_port=29500,
    )


def test_torchelastic_agrees_with_lightning(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in TORCHRUN_RANK_1.items():
        monkeypatch.setenv(key, value)
    env = detect_cluster_environment(dict(TORCHRUN_RANK_1))
    lightning = TorchElasticEnvironment()
    assert env is not None
    assert (env.rank, env.local_rank, env.node_rank, env.world_size, env.master_port) == (
        lightning.global_rank(),
        lightning.local_rank(),
        lightning.node_rank(),
        lightning.world_size(),
        lightning.main_port,
    )


def test_lightning_launcher_variables() -> None:
    env = detect_cluster_environment(
        {
            "LOCAL_RANK": "1",
            "NODE_RANK": "0",
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "5",
        }
    )
    assert env == DistributedEnvironment("lightning", 2, 1, 1, 2, 0, 1, "127.0.0.1", 5)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({**TORCHRUN_RANK_1, "RANK": "one"}, "RANK='one' is not an integer"),
        ({**TORCHRUN_RANK_1, "MASTER_PORT": "70000"}, "MASTER_PORT=70000 is not a port"),
        ({"TORCHELASTIC_RUN_ID": "x"}, "WORLD_SIZE is required"),
    ],
)
def test_bad_variables_rejected(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        detect_cluster_environment(environ)


def test_as_env_and_devices() -> None:
    env = DistributedEnvironment("d2lightning", 4, 3, 1, 2, 1, 2, "10.1.2.3", 4567)
    assert env.devices == 2
    assert env.as_env() == {
        "MASTER_ADDR": "10.1.2.3",
        "MASTER_PORT": "4567",
        "WORLD_SIZE": "4",
        "RANK": "3",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "NODE_RANK": "1",
    }


def test_lightning_cluster_environment_outside_launch_is_none() -> None:
    assert lightning_cluster_environment() is None

"""Which launcher created this process: SLURM (``srun``), torchrun, Lightning's launcher, or ``launch``.

There is no detectron2 counterpart (its ``launch`` always starts the processes itself). The detection
follows Lightning 2.6's order and rules, so that :func:`d2lightning.engine.launch.launch` and the Lightning
``Trainer`` built inside the launched function agree on ranks, world size and rendezvous:

1. torchrun / torchelastic: ``TORCHELASTIC_RUN_ID`` is set (``torch.distributed.is_torchelastic_launched``).
2. SLURM: ``SLURM_NTASKS`` is set and the job name (``SLURM_JOB_NAME``) is not ``bash`` or ``interactive``.
3. A launcher that exported ``LOCAL_RANK`` and ``WORLD_SIZE`` (Lightning's own, ``torch.distributed.launch``).

Inside a process started or joined by ``launch``, the environment ``launch`` set up is reported instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing lightning costs seconds; spawned workers that never build a Trainer skip it
    from lightning.fabric.plugins.environments import ClusterEnvironment

__all__ = [
    "DistributedEnvironment",
    "detect_cluster_environment",
    "first_slurm_host",
    "lightning_cluster_environment",
    "slurm_default_port",
]

# Lightning's defaults when MASTER_PORT is unset: 15000 + last four digits of the SLURM job id, else 12910.
_SLURM_PORT_BASE = 15000
_FALLBACK_PORT = 12910
_LAUNCHED: DistributedEnvironment | None = None  # set by ``launch`` in the processes it runs main_func in


@dataclass(frozen=True)
class DistributedEnvironment:
    """Ranks, sizes and rendezvous of one process of a distributed run.

    Attributes:
        launcher: who created the processes: ``"slurm"``, ``"torchelastic"``, ``"lightning"``
            (``LOCAL_RANK`` and ``WORLD_SIZE`` exported by some launcher) or ``"d2lightning"`` (workers
            spawned by ``launch``).
        world_size: number of processes in the run.
        rank: global rank of this process.
        local_rank: rank of this process on its machine.
        local_world_size: processes per machine; Lightning's ``devices``.
        node_rank: index of this machine.
        num_nodes: number of machines; Lightning's ``num_nodes``.
        master_addr: host of the rendezvous (``MASTER_ADDR``).
        master_port: port of the rendezvous (``MASTER_PORT``).
    """

    launcher: str
    world_size: int
    rank: int
    local_rank: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    master_addr: str
    master_port: int

    @property
    def devices(self) -> int:
        """Processes per machine, the value for ``lightning.Trainer(devices=...)``."""
        return self.local_world_size

    def as_env(self) -> dict[str, str]:
        """The torch rendezvous variables for this process (``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``...)."""
        return {
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            "WORLD_SIZE": str(self.world_size),
            "RANK": str(self.rank),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "NODE_RANK": str(self.node_rank),
        }


def detect_cluster_environment(environ: Mapping[str, str] | None = None) -> DistributedEnvironment | None:
    """Describe the processes a launcher already created, or None when this process was started alone.

    Args:
        environ: the variables to read; ``os.environ`` by default. When it is None and this process runs
            ``main_func`` under :func:`~d2lightning.engine.launch.launch`, the environment ``launch`` set up
            is returned.

    Returns:
        The environment, or None when no launcher is detected. SLURM values come from ``SLURM_NTASKS``,
        ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NODEID``, ``SLURM_NNODES`` and
        ``SLURM_NTASKS_PER_NODE`` (else ``SLURM_STEP_TASKS_PER_NODE``/``SLURM_TASKS_PER_NODE``);
        ``master_addr`` is ``MASTER_ADDR`` or the first host of ``SLURM_NODELIST``; ``master_port`` is
        ``MASTER_PORT`` or :func:`slurm_default_port`, as in Lightning's ``SLURMEnvironment``.

    Raises:
        ValueError: when a variable is not an integer, or SLURM puts different numbers of tasks on the nodes
            (detectron2's per-machine group needs the same number on every machine).
    """
    if environ is None:
        if _LAUNCHED is not None:
            return _LAUNCHED
        environ = os.environ
    if environ.get("TORCHELASTIC_RUN_ID") is not None:
        return _from_torchelastic(environ)
    if "SLURM_NTASKS" in environ and environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return _from_slurm(environ)
    if "LOCAL_RANK" in environ and "WORLD_SIZE" in environ:
        return _from_env_vars(environ, "lightning")
    return None


def lightning_cluster_environment() -> ClusterEnvironment | None:
    """The cluster-environment plugin a Lightning ``Trainer`` must get to agree with ``launch``.

    Returns:
        ``LightningEnvironment()`` in a worker spawned by ``launch`` (Lightning would otherwise read the ranks
        of an enclosing SLURM or torchrun job, e.g. one SLURM task per machine that ``launch`` fans out into
        several workers); None elsewhere, where Lightning's own detection already agrees with
        :func:`detect_cluster_environment`. Pass a non-None value as ``Trainer(plugins=[...])``.
    """
    from lightning.fabric.plugins.environments import LightningEnvironment

    env = detect_cluster_environment()
    if env is not None and env.launcher == "d2lightning":
        return LightningEnvironment()
    return None


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``"gpu[03-05,9],cpu1"`` gives ``"gpu03"``.

    Every bracketed range contributes its first value, so ``"rack[1-2]-n[7-8]"`` gives ``"rack1-n7"``.

    Raises:
        ValueError: when ``nodelist`` is empty or its brackets do not match.
    """
    host: list[str] = []
    i = 0
    while i < len(nodelist) and nodelist[i] not in ", ":
        if nodelist[i] == "[":
            end = nodelist.find("]", i)
            if end < 0:
                raise ValueError(f"nodelist={nodelist!r} has an unclosed '['")
            host.append(re.split(r"[,-]", nodelist[i + 1 : end])[0])
            i = end + 1
        else:
            host.append(nodelist[i])
            i += 1
    if not host:
        raise ValueError(f"nodelist={nodelist!r} names no host")
    return "".join(host)


def slurm_default_port(job_id: str | None) -> int:
    """Lightning's default port under SLURM: 15000 + the last 4 digits of the job id (12910 without one)."""
    if not job_id:
        return _FALLBACK_PORT
    return _SLURM_PORT_BASE + int(job_id[-4:])


def _int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = environ.get(name)
    if raw is None:
        if default is None:
            raise ValueError(f"environment variable {name} is required by the detected launcher but unset")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def _port(environ: Mapping[str, str], default: int) -> int:
    port = _int(environ, "MASTER_PORT", default)
    if not 0 < port < 65536:
        raise ValueError(f"environment variable MASTER_PORT={port} is not a port in 1..65535")
    return port


def _tasks_per_node(spec: str) -> list[int]:
    """Expand SLURM's ``"2(x3),1"`` into ``[2, 2, 2, 1]``."""
    counts: list[int] = []
    for part in spec.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if match is None:
            raise ValueError(f"cannot parse SLURM tasks per node {spec!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def _from_slurm(environ: Mapping[str, str]) -> DistributedEnvironment:
    world = _int(environ, "SLURM_NTASKS")
    if "SLURM_NTASKS_PER_NODE" in environ:
        per_node = _int(environ, "SLURM_NTASKS_PER_NODE")
    else:
        spec = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE") or str(world)
        counts = _tasks_per_node(spec)
        if len(set(counts)) != 1:
            raise ValueError(
                f"SLURM places {spec!r} tasks on the nodes; d2lightning needs the same number on every node "
                "(use --ntasks-per-node)"
            )
        per_node = counts[0]
    nodelist = environ.get("SLURM_NODELIST") or environ.get("SLURM_JOB_NODELIST") or "127.0.0.1"
    return DistributedEnvironment(
        launcher="slurm",
        world_size=world,
        rank=_int(environ, "SLURM_PROCID", 0),
        local_rank=_int(environ, "SLURM_LOCALID", 0),
        local_world_size=per_node,
        node_rank=_int(environ, "SLURM_NODEID", 0),
        num_nodes=_int(environ, "SLURM_NNODES", _int(environ, "SLURM_JOB_NUM_NODES", 1)),
        master_addr=environ.get("MASTER_ADDR") or first_slurm_host(nodelist),
        master_port=_port(environ, slurm_default_port(environ.get("SLURM_JOB_ID"))),
    )


def _from_torchelastic(environ: Mapping[str, str]) -> DistributedEnvironment:
    env = _from_env_vars(environ, "torchelastic")
    return DistributedEnvironment(**{**env.__dict__, "node_rank": _int(environ, "GROUP_RANK", 0)})


def _from_env_vars(environ: Mapping[str, str], launcher: str) -> DistributedEnvironment:
    """``WORLD_SIZE``, ``LOCAL_RANK`` and friends; a missing ``LOCAL_WORLD_SIZE`` means one machine."""
    world = _int(environ, "WORLD_SIZE")
    local_world = _int(environ, "LOCAL_WORLD_SIZE", world)
    local_rank = _int(environ, "LOCAL_RANK")
    node_rank = _int(environ, "NODE_RANK", _int(environ, "GROUP_RANK", 0))
    return DistributedEnvironment(
        launcher=launcher,
        world_size=world,
        rank=_int(environ, "RANK", node_rank * local_world + local_rank),
        local_rank=local_rank,
        local_world_size=local_world,
        node_rank=node_rank,
        num_nodes=max(world // max(local_world, 1), 1),
        master_addr=environ.get("MASTER_ADDR") or "127.0.0.1",
        master_port=_port(environ, _FALLBACK_PORT),
    )


def _set_launched(env: DistributedEnvironment | None) -> None:
    """Record (or clear) the environment ``launch`` runs ``main_func`` in."""
    global _LAUNCHED
    _LAUNCHED = env

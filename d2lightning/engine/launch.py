"""detectron2 ``engine/launch.py``: start, or join, the processes of a distributed run.

``launch(main_func, num_gpus_per_machine, ...)`` runs ``main_func(*args)`` once per process, with the default
process group and detectron2's per-machine group ready, exactly as detectron2's does. A Lightning ``Trainer``
built inside ``main_func`` with ``strategy="ddp"``, ``devices=num_gpus_per_machine`` and
``num_nodes=num_machines`` joins that group: the workers export ``LOCAL_RANK``, so Lightning starts no
processes of its own, and it skips ``init_process_group`` because the group already exists.

Three ways through, decided before anything starts:

* world size 1: ``main_func(*args)`` in this process, nothing else (detectron2's behaviour);
* a launcher already created the processes (``srun``, torchrun, Lightning's; see
  :mod:`d2lightning.engine.distributed.cluster`) and its world size is ``num_machines * num_gpus_per_machine``: nothing
  is started, the group is initialised here and ``main_func`` runs in this process;
* otherwise ``num_gpus_per_machine`` workers are spawned on this machine (also under one SLURM task per
  machine). Without GPUs they run on CPU over gloo.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import torch
import torch.distributed as dist

from d2lightning.engine.distributed.cluster import (
    DistributedEnvironment,
    detect_cluster_environment,
    lightning_cluster_environment,
)
from d2lightning.engine.distributed.workers import RendezvousTimeoutError, run_in_process, spawn_workers
from d2lightning.utils import comm
from d2lightning.utils.validation import check_int

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_RENDEZVOUS_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "DistributedEnvironment",
    "RendezvousTimeoutError",
    "detect_cluster_environment",
    "ensure_local_process_group",
    "launch",
    "lightning_cluster_environment",
]

DEFAULT_TIMEOUT = timedelta(minutes=30)
#: How long a process waits for the run's master process before giving up (d2lightning only);
#: the environment variable ``D2L_RENDEZVOUS_TIMEOUT`` (seconds) overrides it.
DEFAULT_RENDEZVOUS_TIMEOUT = timedelta(minutes=10)
_RENDEZVOUS_VARIABLE = "D2L_RENDEZVOUS_TIMEOUT"


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
    *,
    rendezvous_timeout: timedelta | None = None,
) -> None:
    """Run ``main_func(*args)`` in every process of a distributed run (detectron2's ``launch``).

    Must be called on every machine. When this function starts the workers, ``main_func`` and ``args`` must
    be picklable (module-level function), as in detectron2. Each process gets ``MASTER_ADDR``,
    ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` and ``NODE_RANK``, then
    ``init_process_group`` (NCCL with CUDA, else gloo) with ``timeout``, the CUDA device ``LOCAL_RANK``,
    ``comm.create_local_process_group(num_gpus_per_machine)`` and a barrier, before ``main_func`` runs.

    Before joining the group, every process but rank 0 waits for the master's address to accept connections:
    after a few seconds it logs whom it waits for (address, rank 0, machine rank 0), and after
    ``rendezvous_timeout`` it gives up with :class:`RendezvousTimeoutError` (detectron2 waits ``timeout`` in
    silence).

    Args:
        main_func: called as ``main_func(*args)``; its return value is discarded.
        num_gpus_per_machine: processes per machine (GPUs per machine on GPU machines).
        num_machines: number of machines.
        machine_rank: index of this machine, in ``[0, num_machines)``.
        dist_url: the rendezvous: ``"tcp://host:port"``; ``"env://"`` (``MASTER_ADDR``/``MASTER_PORT``);
            ``"auto"`` (a free port on 127.0.0.1, one machine only); or None (``MASTER_ADDR``/``MASTER_PORT``
            when set, else the detected launcher's, else ``"auto"`` on one machine). Processes created by a
            launcher use the launcher's rendezvous unless a ``tcp://`` or ``env://`` URL is given.
        args: positional arguments of ``main_func``.
        timeout: the process group's timeout.
        rendezvous_timeout: how long a process waits for the master (d2lightning only, keyword-only); None:
            ``D2L_RENDEZVOUS_TIMEOUT`` seconds when set, else :data:`DEFAULT_RENDEZVOUS_TIMEOUT`.

    Raises:
        TypeError / ValueError: on bad arguments, before any process starts; also when a detected launcher
            created a different number of processes than ``num_machines * num_gpus_per_machine``.
        torch.multiprocessing.ProcessRaisedException: when a worker raised; the message holds the traceback
            of the worker that failed first, and ``__cause__`` its exception (when it could be pickled). The
            other workers are stopped before it is raised.
        RendezvousTimeoutError: in this process (when it is not rank 0) when the master cannot be reached in
            time; from spawned workers, as the cause of a ``ProcessRaisedException``.
        TrainingPreempted: (code 143) when the workers stopped on SIGTERM; a SIGTERM to this process is passed
            on to the workers it started.
    """
    _check_arguments(main_func, num_gpus_per_machine, num_machines, machine_rank, args, timeout)
    rendezvous = _rendezvous_timeout(rendezvous_timeout)
    url = _parse_dist_url(dist_url, num_machines)
    world = num_machines * num_gpus_per_machine
    existing = detect_cluster_environment()
    if existing is not None and existing.world_size == world > 1:
        _join(existing, url, num_gpus_per_machine, num_machines, main_func, tuple(args), (timeout, rendezvous))
        return
    fans_out = _check_fan_out(existing, num_gpus_per_machine, num_machines, machine_rank)
    if world == 1:
        main_func(*args)
        return
    if url is None:
        url = (existing.master_addr, existing.master_port) if fans_out and existing else None
    host, port = url if url is not None else _default_rendezvous(num_machines)
    base = DistributedEnvironment(
        launcher="d2lightning",
        world_size=world,
        rank=machine_rank * num_gpus_per_machine,
        local_rank=0,
        local_world_size=num_gpus_per_machine,
        node_rank=machine_rank,
        num_nodes=num_machines,
        master_addr=host,
        master_port=port,
    )
    spawn_workers(main_func, tuple(args), base, timeout, rendezvous)


def ensure_local_process_group(num_workers_per_machine: int | None = None) -> None:
    """Create detectron2's per-machine group if the default group exists without it (collective).

    For code paths where Lightning initialised the default group itself (``launch`` was not used): call it
    on every rank once the strategy is set up, e.g. from ``LightningModule.setup``. Does nothing without a
    process group or when the local group already exists with that size.

    Args:
        num_workers_per_machine: processes per machine (``trainer.num_devices``); by default the detected
            launcher's ``local_world_size``, else the world size (one machine).

    Raises:
        ValueError: as ``comm.create_local_process_group``.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if num_workers_per_machine is None:
        env = detect_cluster_environment()
        num_workers_per_machine = env.local_world_size if env is not None else dist.get_world_size()
    comm.create_local_process_group(num_workers_per_machine)


def _check_arguments(
    main_func: object,
    num_gpus_per_machine: object,
    num_machines: object,
    machine_rank: object,
    args: object,
    timeout: object,
) -> None:
    if not callable(main_func):
        raise TypeError(f"main_func must be callable, got {type(main_func).__name__} {main_func!r}")
    check_int("num_gpus_per_machine", num_gpus_per_machine, 1)
    check_int("num_machines", num_machines, 1)
    check_int("machine_rank", machine_rank, 0)
    if machine_rank >= num_machines:  # type: ignore[operator]
        raise ValueError(f"machine_rank={machine_rank} must be < num_machines={num_machines}")
    if not isinstance(timeout, timedelta):
        raise TypeError(f"timeout must be a datetime.timedelta, got {type(timeout).__name__} {timeout!r}")
    if timeout <= timedelta(0):
        raise ValueError(f"timeout={timeout!r} must be positive")
    if isinstance(args, str) or not isinstance(args, Sequence):
        raise TypeError(f"args must be a tuple or list of arguments for main_func, got {args!r}")
    if torch.cuda.is_available() and num_gpus_per_machine > torch.cuda.device_count():  # type: ignore[operator]
        raise ValueError(
            f"num_gpus_per_machine={num_gpus_per_machine} exceeds the {torch.cuda.device_count()} CUDA devices present"
        )


def _check_fan_out(
    existing: DistributedEnvironment | None, per_machine: int, num_machines: int, machine_rank: int
) -> bool:
    """True when a launcher made one process per machine that ``launch`` fans out; raise on a mismatch."""
    if existing is None:
        return False
    fans_out = existing.world_size == num_machines and existing.local_world_size == 1
    if existing.world_size > 1 and not fans_out:
        raise ValueError(
            f"{existing.launcher} already started {existing.world_size} processes "
            f"({existing.local_world_size} per machine on {existing.num_nodes}), but "
            f"num_gpus_per_machine={per_machine} x num_machines={num_machines} = "
            f"{per_machine * num_machines}; pass num_gpus_per_machine={existing.local_world_size}, "
            f"num_machines={existing.num_nodes}"
        )
    if fans_out and existing.node_rank != machine_rank:
        raise ValueError(
            f"machine_rank={machine_rank} differs from the {existing.launcher} node rank "
            f"{existing.node_rank} of this machine"
        )
    return fans_out


def _rendezvous_timeout(given: object) -> timedelta:
    """``given``, else ``D2L_RENDEZVOUS_TIMEOUT`` seconds, else the default; checked."""
    if given is None:
        text = os.environ.get(_RENDEZVOUS_VARIABLE, "").strip()
        if not text:
            return DEFAULT_RENDEZVOUS_TIMEOUT
        try:
            given = timedelta(seconds=float(text))
        except (ValueError, OverflowError):
            raise ValueError(f"{_RENDEZVOUS_VARIABLE}={text!r} must be a number of seconds") from None
    if not isinstance(given, timedelta):
        raise TypeError(f"rendezvous_timeout must be a datetime.timedelta or None, got {given!r}")
    if given <= timedelta(0):
        raise ValueError(f"rendezvous_timeout={given!r} must be positive (from {_RENDEZVOUS_VARIABLE} or launch())")
    return given


def _parse_dist_url(dist_url: str | None, num_machines: int) -> tuple[str, int] | None:
    """``(host, port)`` of an explicit rendezvous, ``("auto", 0)`` for ``"auto"``, None when unset."""
    if dist_url is None:
        return None
    if not isinstance(dist_url, str):
        raise TypeError(f"dist_url must be a str or None, got {dist_url!r}")
    if dist_url == "auto":
        if num_machines > 1:
            raise ValueError(f"dist_url='auto' is not supported with num_machines={num_machines} (> 1)")
        return ("auto", 0)
    if dist_url == "env://":
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise ValueError("dist_url='env://' needs the MASTER_ADDR and MASTER_PORT environment variables")
        return _host_port(dist_url, os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"])
    parts = urlsplit(dist_url)
    if parts.scheme != "tcp":
        raise ValueError(f"dist_url={dist_url!r} is not supported; use 'tcp://host:port', 'env://' or 'auto'")
    try:
        port = parts.port
    except ValueError:
        port = -1
    return _host_port(dist_url, parts.hostname or "", "" if port is None else str(port))


def _host_port(dist_url: str, host: str, port: str) -> tuple[str, int]:
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"dist_url={dist_url!r} needs a host and a port in 1..65535 (got {host!r}:{port!r})")
    return host, int(port)


def _default_rendezvous(num_machines: int) -> tuple[str, int]:
    if "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
        return _host_port("env://", os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"])
    if num_machines > 1:
        raise ValueError(f"dist_url=None with num_machines={num_machines}: pass dist_url='tcp://host:port'")
    return ("auto", 0)


def _join(
    env: DistributedEnvironment,
    url: tuple[str, int] | None,
    per_machine: int,
    num_machines: int,
    main_func: Callable[..., Any],
    args: tuple[Any, ...],
    timeouts: tuple[timedelta, timedelta],
) -> None:
    """Run ``main_func`` in this process, one of the processes a launcher created."""
    if env.launcher == "slurm" and "SLURM_STEP_ID" not in os.environ:
        raise RuntimeError(
            f"this SLURM job has {env.world_size} tasks but this process is its batch script, not one of "
            "them: start the training with `srun python ...`"
        )
    if (env.local_world_size, env.num_nodes) != (per_machine, num_machines):
        raise ValueError(
            f"num_gpus_per_machine={per_machine}, num_machines={num_machines} do not match {env.launcher}'s "
            f"{env.local_world_size} processes per machine on {env.num_nodes} machines"
        )
    if env.rank != env.node_rank * env.local_world_size + env.local_rank:
        raise ValueError(
            f"{env.launcher} gave rank {env.rank} to local rank {env.local_rank} of node {env.node_rank}; "
            "ranks must be consecutive per machine (SLURM: --distribution=block)"
        )
    if url is not None and url[0] != "auto":
        if env.launcher == "torchelastic":  # torchrun's agent already holds the rendezvous; another one hangs
            if (url[0], url[1]) != (env.master_addr, env.master_port):
                logger.warning(
                    f"dist_url tcp://{url[0]}:{url[1]} ignored: torchrun set the rendezvous "
                    f"{env.master_addr}:{env.master_port}"
                )
        else:
            env = replace(env, master_addr=url[0], master_port=url[1])
    if env.launcher == "slurm":  # Lightning's SLURMEnvironment refuses SLURM_NTASKS > 1 without it
        os.environ.setdefault("SLURM_NTASKS_PER_NODE", str(env.local_world_size))
    run_in_process(env, main_func, args, *timeouts)

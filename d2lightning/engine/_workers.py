"""The processes of ``launch``: set one up and run ``main_func`` in it, spawn workers, report failures.

Private to :mod:`d2lightning.engine.launch`. ``run_in_process`` is detectron2's ``_distributed_worker`` body;
``spawn_workers`` is its ``mp.start_processes(..., start_method="spawn")`` plus a report of the worker that
failed *first* (a rank that raises makes its peers fail too, and those may reach the parent earlier).
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from d2lightning.engine import cluster
from d2lightning.engine.cluster import DistributedEnvironment
from d2lightning.utils import comm

logger = logging.getLogger("d2lightning.engine.launch")


def run_in_process(
    env: DistributedEnvironment, main_func: Callable[..., Any], args: tuple[Any, ...], timeout: timedelta
) -> None:
    """Set up this process of ``env`` (variables, group, device, local group, barrier), run ``main_func``."""
    os.environ.update(env.as_env())
    cluster._set_launched(env)
    try:
        if torch.cuda.is_available():
            torch.cuda.set_device(env.local_rank)
        created = not dist.is_initialized()
        if created:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            try:
                dist.init_process_group(
                    backend, init_method="env://", world_size=env.world_size, rank=env.rank, timeout=timeout
                )
            except Exception:
                logger.error("Process group URL: tcp://%s:%d", env.master_addr, env.master_port)
                raise
        elif dist.get_world_size() != env.world_size:
            raise RuntimeError(
                f"a process group of size {dist.get_world_size()} already exists, expected {env.world_size}"
            )
        comm.create_local_process_group(env.local_world_size)
        comm.synchronize()  # avoids a timeout right after init_process_group, as detectron2 notes
        main_func(*args)
        if created:
            dist.destroy_process_group()
            comm._reset_local_process_group()
    finally:
        cluster._set_launched(None)


def _distributed_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    args: tuple[Any, ...],
    base: DistributedEnvironment,
    timeout: timedelta,
    error_dir: str,
) -> None:
    """Entry point of a spawned worker; records its failure time so the parent can report the first one."""
    env = replace(base, local_rank=local_rank, rank=base.node_rank * base.local_world_size + local_rank)
    try:
        run_in_process(env, main_func, args, timeout)
    except Exception:
        record = {
            "time": time.monotonic(),
            "index": local_rank,
            "pid": os.getpid(),
            "tb": traceback.format_exc(),
        }
        tmp = os.path.join(error_dir, f".{local_rank}.tmp")
        with open(tmp, "wb") as f:
            pickle.dump(record, f)
        os.replace(tmp, os.path.join(error_dir, f"{local_rank}.pkl"))
        raise


def spawn_workers(
    main_func: Callable[..., Any], args: tuple[Any, ...], base: DistributedEnvironment, timeout: timedelta
) -> None:
    """Run ``main_func`` in ``base.local_world_size`` spawned workers of ``base``; raise the first failure."""
    if base.master_addr == "auto":
        base = replace(base, master_addr="127.0.0.1", master_port=_free_port())
    error_dir = tempfile.mkdtemp(prefix="d2lightning-launch-")
    try:
        ctx = mp.start_processes(
            _distributed_worker,
            args=(main_func, args, base, timeout, error_dir),
            nprocs=base.local_world_size,
            join=False,
            daemon=False,
            start_method="spawn",
        )
        try:
            while not ctx.join():
                pass
        except mp.ProcessRaisedException as exc:
            first = _first_failure(error_dir)
            if first is None or first["index"] == exc.error_index:
                raise
            raise mp.ProcessRaisedException(
                f"\n\n-- Process {first['index']} failed first, with the following error:\n{first['tb']}",
                first["index"],
                first["pid"],
            ) from exc
        except BaseException:
            _stop(ctx.processes)
            raise
    finally:
        shutil.rmtree(error_dir, ignore_errors=True)


def _first_failure(error_dir: str) -> dict[str, Any] | None:
    records = []
    for name in os.listdir(error_dir):
        if name.endswith(".pkl"):
            with open(os.path.join(error_dir, name), "rb") as f:
                records.append(pickle.load(f))
    return min(records, key=lambda r: r["time"]) if records else None


def _stop(processes: Sequence[Any]) -> None:
    """SIGTERM the workers still alive, then SIGKILL those that ignore it for 5 s."""
    for p in processes:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 5
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))  # the OS picks; another process may still take it before we bind (as detectron2)
        return int(sock.getsockname()[1])

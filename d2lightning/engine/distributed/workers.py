"""The processes of ``launch``: set one up and run ``main_func`` in it, spawn workers, report failures.

Private to :mod:`d2lightning.engine.launch`. ``run_in_process`` is detectron2's ``_distributed_worker`` body,
plus a wait for the master process that says whom it waits for and gives up after the rendezvous timeout
(detectron2 waits the whole process-group timeout, 30 minutes, in silence). ``spawn_workers`` is its
``mp.start_processes(..., start_method="spawn")`` plus:

* a report of the worker that failed *first* (a rank that raises makes its peers fail too, and those may reach
  the parent earlier), raised with that worker's own exception as ``__cause__`` when it can be pickled, so the
  caller can tell a user error from a bug;
* SIGTERM sent to the parent is passed on to the workers, and workers that stopped on it (exit status 143, see
  :mod:`d2lightning.engine.recipes.termination`) make the parent raise ``TrainingPreempted(143)`` too;
* with ``D2L_SIGINT=checkpoint`` (the ``d2lightning`` command), a first SIGINT of the parent is passed on as SIGTERM
  (a terminal's Ctrl-C reaches the workers too: each then holds both, and stops once) and the parent raises
  ``TrainingPreempted(130)`` when they have stopped; a second SIGINT raises ``KeyboardInterrupt`` and ends them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import signal
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from d2lightning.engine.distributed import cluster
from d2lightning.engine.distributed.cluster import DistributedEnvironment
from d2lightning.utils import comm

logger = logging.getLogger("d2lightning.engine.launch")

_TERMINATED = 128 + signal.SIGTERM  # the exit status of a worker that stopped on SIGTERM
_INTERRUPTED = 128 + signal.SIGINT  # ... on a first Ctrl-C
_ANNOUNCE_AFTER = 3.0  # seconds without the master before saying whom we wait for


class RendezvousTimeoutError(TimeoutError):
    """A process of a distributed run could not reach the run's master process in time."""


def run_in_process(
    env: DistributedEnvironment,
    main_func: Callable[..., Any],
    args: tuple[Any, ...],
    timeout: timedelta,
    rendezvous_timeout: timedelta,
) -> None:
    """Set up this process of ``env`` (variables, group, device, local group, barrier), run ``main_func``."""
    os.environ.update(env.as_env())
    cluster._set_launched(env)
    try:
        if torch.cuda.is_available():
            torch.cuda.set_device(env.local_rank)
        created = not dist.is_initialized()
        if created:
            if env.rank != 0:
                wait_for_master(env, rendezvous_timeout)
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


def wait_for_master(env: DistributedEnvironment, timeout: timedelta) -> None:
    """Wait until the master's rendezvous port accepts connections (ranks > 0, before joining the group).

    After a few seconds without an answer, log whom this process waits for and for how long; give up after
    ``timeout``.

    Raises:
        RendezvousTimeoutError: naming the address, the master's rank and machine, and what to check.
    """
    address = f"{env.master_addr}:{env.master_port}"
    start = time.monotonic()
    deadline = start + timeout.total_seconds()
    announced = False
    while True:
        remaining = deadline - time.monotonic()
        try:
            with socket.create_connection((env.master_addr, env.master_port), timeout=max(0.1, min(5.0, remaining))):
                if announced:
                    logger.warning(f"Rank {env.rank}: reached the master process at {address}")
                return
        except OSError as e:
            error = e
        now = time.monotonic()
        if now >= deadline:
            raise RendezvousTimeoutError(
                f"Rank {env.rank} (machine rank {env.node_rank}) could not reach the master process of this run "
                f"at {address} (rank 0, on machine rank 0) within {timeout}: start machine rank 0 with the same "
                f"--dist-url, check the address and that the port is open ({error}). D2L_RENDEZVOUS_TIMEOUT="
                "<seconds> sets how long to wait"
            )
        if not announced and now - start >= _ANNOUNCE_AFTER:
            announced = True
            logger.warning(
                f"Rank {env.rank} (machine rank {env.node_rank}) is waiting for the master process of this run at "
                f"{address} (rank 0, on machine rank 0): {error}. Giving up in {timeout} "
                "(D2L_RENDEZVOUS_TIMEOUT=<seconds>)"
            )
        time.sleep(max(0.0, min(0.5, deadline - now)))


def _distributed_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    args: tuple[Any, ...],
    base: DistributedEnvironment,
    timeouts: tuple[timedelta, timedelta],
    error_dir: str,
) -> None:
    """Entry point of a spawned worker; records its failure (time, traceback, the exception) for the parent."""
    env = replace(base, local_rank=local_rank, rank=base.node_rank * base.local_world_size + local_rank)
    try:
        run_in_process(env, main_func, args, *timeouts)
    except Exception as e:
        _write_record(
            error_dir,
            local_rank,
            {
                "time": time.monotonic(),
                "index": local_rank,
                "pid": os.getpid(),
                "tb": traceback.format_exc(),
                "exception": _pickled(e),
            },
        )
        raise
    except SystemExit as e:
        message = getattr(e, "message", None)
        if message:  # TrainingPreempted: the parent repeats its message
            _write_record(error_dir, f"stop{local_rank}", {"code": e.code, "message": message})
        raise


def spawn_workers(
    main_func: Callable[..., Any],
    args: tuple[Any, ...],
    base: DistributedEnvironment,
    timeout: timedelta,
    rendezvous_timeout: timedelta,
) -> None:
    """Run ``main_func`` in ``base.local_world_size`` spawned workers of ``base``; raise the first failure."""
    if base.master_addr == "auto":
        base = replace(base, master_addr="127.0.0.1", master_port=_free_port())
    error_dir = tempfile.mkdtemp(prefix="d2lightning-launch-")
    try:
        ctx = mp.start_processes(
            _distributed_worker,
            args=(main_func, args, base, (timeout, rendezvous_timeout), error_dir),
            nprocs=base.local_world_size,
            join=False,
            daemon=False,
            start_method="spawn",
        )
        with _sigterm_forwarded_to(ctx.processes) as forwarded, _quiet_termination_notices():
            try:
                while not ctx.join():
                    pass
            except mp.ProcessRaisedException as exc:
                first = _first_failure(error_dir)
                if first is None:
                    raise
                raise mp.ProcessRaisedException(
                    f"\n\n-- Process {first['index']} failed first, with the following error:\n{first['tb']}",
                    first["index"],
                    first["pid"],
                ) from _unpickled(first.get("exception")) or exc
            except mp.ProcessExitedException as exc:
                if exc.exit_code in (_TERMINATED, _INTERRUPTED) or (forwarded and exc.exit_code == -signal.SIGTERM):
                    _raise_stopped(error_dir, signal.SIGINT in forwarded or exc.exit_code == _INTERRUPTED)
                raise
            except BaseException:
                _stop(ctx.processes)
                raise
    finally:
        shutil.rmtree(error_dir, ignore_errors=True)


@contextlib.contextmanager
def _sigterm_forwarded_to(processes: Sequence[Any]) -> Iterator[list[int]]:
    """While waiting for the workers, pass a SIGTERM this process receives on to them (and, with
    ``D2L_SIGINT=checkpoint``, a first SIGINT, as SIGTERM; a second one raises ``KeyboardInterrupt``).

    Yields a list that gets the signal for each one passed on.
    """
    from d2lightning.engine.recipes.termination import sigint_checkpoints

    forwarded: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield forwarded
        return

    def forward(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and signum in forwarded:
            raise KeyboardInterrupt
        forwarded.append(signum)
        for p in processes:
            if p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)

    signals = (signal.SIGTERM, signal.SIGINT) if sigint_checkpoints() else (signal.SIGTERM,)
    previous = {signum: signal.signal(signum, forward) for signum in signals}
    try:
        yield forwarded
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _quiet_termination_notices() -> Iterator[None]:
    """Hide torch's "Terminating process ... via signal SIGTERM" notices: the failure itself is what is reported."""
    spawn_logger = logging.getLogger("torch.multiprocessing.spawn")
    notice = _DropMessages("Terminating process")
    spawn_logger.addFilter(notice)
    try:
        yield
    finally:
        spawn_logger.removeFilter(notice)


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _raise_stopped(error_dir: str, interrupted: bool) -> None:
    """The workers stopped on SIGTERM (or a Ctrl-C): raise ``TrainingPreempted(143)`` (130) with their message."""
    from d2lightning.engine.recipes.termination import TrainingPreempted

    by = "Ctrl-C (SIGINT)" if interrupted else "SIGTERM"
    message = f"Training stopped by {by} before its first iteration boundary: nothing was saved"
    for name in sorted(os.listdir(error_dir)):
        if name.startswith("stop") and name.endswith(".pkl"):
            with open(os.path.join(error_dir, name), "rb") as f:
                message = pickle.load(f)["message"]
            break
    raise TrainingPreempted(_INTERRUPTED if interrupted else _TERMINATED, message) from None


def _write_record(error_dir: str, name: object, record: dict[str, Any]) -> None:
    tmp = os.path.join(error_dir, f".{name}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(record, f)
    os.replace(tmp, os.path.join(error_dir, f"{name}.pkl"))


def _pickled(error: BaseException) -> bytes | None:
    """``error`` pickled, when it survives a round trip (an exception whose class needs other arguments may not)."""
    try:
        data = pickle.dumps(error)
        pickle.loads(data)
    except Exception:
        return None
    return data


def _unpickled(data: bytes | None) -> BaseException | None:
    if data is None:
        return None
    try:
        error = pickle.loads(data)
    except Exception:
        return None
    return error if isinstance(error, BaseException) else None


def _first_failure(error_dir: str) -> dict[str, Any] | None:
    records = []
    for name in os.listdir(error_dir):
        if name.endswith(".pkl") and not name.startswith("stop"):
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

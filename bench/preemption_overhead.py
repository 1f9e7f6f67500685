"""Per-iteration cost of ``SlurmPreemption`` (the Slurm preemption check) in a 2-process gloo run on CPU.

Three measurements, each the median of ``--repeats`` runs:

1. ``after_step`` of the hook on an iteration without a check (1 process, called directly);
2. one check: the broadcast of rank 0's decision (a 1-element int32 tensor) across 2 processes;
3. end to end: a 2-process ``SimpleTrainer.train`` of a tiny MLP (DDP over gloo) three ways, interleaved
   round-robin: no hook, the hook checking every 20 iterations (the default), and every iteration.

The amortised cost per iteration is (1) + (2) / check_period. Usage::

    python bench/preemption_overhead.py [--repeats 5] [--iters 600] [--broadcasts 2000]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import socket
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WARMUP = 20
WAYS = {"no hook": None, "check every 20": 20, "check every 1": 1}


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"loss": nn.functional.mse_loss(self.net(x), y)}


def _data(rank: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(rank)
    return itertools.cycle([(torch.randn(32, 32, generator=g), torch.randn(32, 1, generator=g)) for _ in range(8)])


class _Clock:
    """Times iterations WARMUP .. end (a duck-typed hook)."""

    def before_step(self) -> None:
        if self.trainer.iter == WARMUP:  # type: ignore[attr-defined]
            self.start = time.perf_counter()

    def after_train(self) -> None:
        self.end = time.perf_counter()


def _train(iters: int, period: int | None) -> float:
    from d2lightning.engine import SimpleTrainer
    from d2lightning.slurm import SlurmPreemption
    from d2lightning.utils import comm

    torch.manual_seed(0)
    model = _MLP()
    trainer = SimpleTrainer(model, _data(comm.get_rank()), torch.optim.SGD(model.parameters(), lr=0.01))
    clock = _Clock()
    trainer.register_hooks([clock, SlurmPreemption(check_period=period) if period else None])
    trainer.train(0, iters)
    return (clock.end - clock.start) / (iters - WARMUP)


def _worker(rank: int, port: int, args: argparse.Namespace, results: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank))
    os.environ.update(LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2", NODE_RANK="0", OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from d2lightning.engine.recipes.termination import _broadcast_from_main
    from d2lightning.utils import comm

    dist.init_process_group("gloo", rank=rank, world_size=2)
    comm.create_local_process_group(2)
    broadcasts = []
    for _ in range(args.repeats):
        comm.synchronize()
        start = time.perf_counter()
        for _ in range(args.broadcasts):
            _broadcast_from_main(0)
        broadcasts.append((time.perf_counter() - start) / args.broadcasts)
    samples: dict[str, list[float]] = {way: [] for way in WAYS}
    for _ in range(args.repeats):
        for way, period in WAYS.items():
            samples[way].append(_train(args.iters, period))
    if rank == 0:
        results.update(broadcast=statistics.median(broadcasts), **{w: statistics.median(v) for w, v in samples.items()})
    dist.destroy_process_group()


def _after_step_cost(calls: int, repeats: int) -> float:
    """Seconds per ``after_step`` call of the hook on an iteration without a check (world size 1)."""
    from d2lightning.slurm import SlurmPreemption

    class _Trainer:
        iter, max_iter = 0, 10**9

    hook = SlurmPreemption()
    hook.trainer = _Trainer()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(calls):
            _Trainer.iter = i * 20 + 3  # never a multiple of the period
            hook.after_step()
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--broadcasts", type=int, default=2000)
    args = parser.parse_args()
    step = _after_step_cost(100_000, args.repeats)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with mp.Manager() as manager, tempfile.TemporaryDirectory():
        results = manager.dict()
        mp.start_processes(_worker, args=(port, args, results), nprocs=2, start_method="spawn")
        res = dict(results)
    print(f"after_step without a check (1 process): {step * 1e6:8.2f} us")
    print(f"one check, broadcast over 2 gloo ranks: {res['broadcast'] * 1e6:8.2f} us")
    print(f"amortised per iteration, check every 20: {(step + res['broadcast'] / 20) * 1e6:8.2f} us")
    print(f"\n2-process SimpleTrainer, {args.iters} iterations x {args.repeats} repeats, median s/iter:")
    for way in WAYS:
        extra = (res[way] - res["no hook"]) * 1e6
        print(f"  {way:15s} {res[way] * 1e6:9.1f} us/iter  ({extra:+7.1f} us vs no hook)")


if __name__ == "__main__":
    main()

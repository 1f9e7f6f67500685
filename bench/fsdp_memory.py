"""Per-rank memory, iteration time and checkpoint cost of sharded training (FSDP2) against DDP, on 2 CPU processes.

A detectron2-style model of a few million parameters (``forward(batch) -> dict of losses``: a small conv backbone,
a wide linear neck, residual MLP blocks, a classification and a box head) is trained with d2lightning's
``SimpleTrainer`` and AdamW in 2 processes started by ``d2lightning.engine.launch`` (gloo, one thread each):

* ``ddp``:  the default strategy (Lightning's ``DDPStrategy``, every rank holds everything);
* ``fsdp``: ``lightning_kwargs={"strategy": ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)}``
  and ``trainer.sharding = FSDPSharding(min_params=...)`` (by default the neck and each block's Linear are units).

Measured on every rank, written to a temporary directory as JSON, printed by this process as one table:

1. memory: the bytes each rank stores for the parameters, the gradients and the AdamW state (local shards:
   ``DTensor.to_local()``), from a hook's ``after_step`` after a few iterations; also the buffers (not sharded,
   not in the total) and the process's resident memory before ``train()`` and then (libraries included);
2. time: the median seconds per iteration after a warm-up (iterations with a checkpoint, and the one after, left
   out); DDP and FSDP runs alternate ``--repeats`` times so that machine noise hits both;
3. checkpoints: one periodic checkpoint (``PeriodicCheckpointer`` on the main process only, as detectron2's scripts
   register it): the gathering of the full states on every rank (``gather_rank_states``: RNG states, plus the full
   model and optimizer under FSDP), ``checkpointer.save`` on rank 0, and the extra wall time of that iteration on
   rank 0 against the median one; then the file's size, and ``DetectionCheckpointer.load`` of it (model and
   optimizer) into a fresh model in this process.

Usage::

    python bench/fsdp_memory.py [--params-millions 6] [--iters 30] [--repeats 3] [--min-params 250000]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from d2lightning.checkpoint import DetectionCheckpointer
from d2lightning.engine import FSDPSharding, HookBase, SimpleTrainer, hooks, launch
from d2lightning.utils import comm

WORLD = 2
BATCH = 32  # images per rank
IMAGE = 32  # image side
CLASSES = 10
STRATEGIES = ("ddp", "fsdp")
MiB = 2**20
_FEATURES = 128 * (IMAGE // 8) ** 2  # the backbone's output, flattened


# ---------------------------------------------------------------- the model and its data
class Block(nn.Module):
    """A residual MLP block."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


class Detector(nn.Module):
    """A detectron2-style model: ``forward(batch)`` returns a dict of losses; most parameters are in the MLP blocks."""

    def __init__(self, width: int, blocks: int) -> None:
        super().__init__()

        def conv(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
            )

        self.backbone = nn.Sequential(conv(3, 32), conv(32, 64), conv(64, 128))  # 32x32 -> 128 x 4 x 4
        self.neck = nn.Linear(_FEATURES, width)
        self.blocks = nn.Sequential(*(Block(width) for _ in range(blocks)))
        self.cls_head = nn.Linear(width, CLASSES)
        self.box_head = nn.Linear(width, 4)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.blocks(self.neck(self.backbone(batch["image"]).flatten(1)))
        return {
            "loss_cls": nn.functional.cross_entropy(self.cls_head(x), batch["label"]),
            "loss_box_reg": nn.functional.smooth_l1_loss(self.box_head(x), batch["box"]),
        }


def model_shape(params_millions: float, blocks: int) -> tuple[int, int]:
    """``(width, blocks)`` giving about ``params_millions`` million parameters (blocks * w^2 + features * w)."""
    target = params_millions * 1e6
    width = (-_FEATURES + math.sqrt(_FEATURES**2 + 4 * blocks * target)) / (2 * blocks)
    return max(16, round(width)), blocks


def rank_batches(rank: int) -> Any:
    """Every rank its own fixed batch (the data costs nothing: the step is what is measured)."""
    g = torch.Generator().manual_seed(100 + rank)
    batch = {
        "image": torch.randn(BATCH, 3, IMAGE, IMAGE, generator=g),
        "label": torch.randint(0, CLASSES, (BATCH,), generator=g),
        "box": torch.rand(BATCH, 4, generator=g),
    }
    return itertools.repeat(batch)


# ---------------------------------------------------------------- what runs in every process
def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _nbytes(tensors: Any) -> int:
    return sum(_local(t).numel() * _local(t).element_size() for t in tensors)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class TimedTrainer(SimpleTrainer):
    """Times the gathering of the states that checkpoints need (every rank, at checkpoint iterations)."""

    gather_seconds: dict[int, float]

    def gather_rank_states(self) -> None:
        start = time.perf_counter()
        super().gather_rank_states()
        self.gather_seconds[self.iter] = time.perf_counter() - start


class TimedCheckpointer(DetectionCheckpointer):
    """Times ``save`` (rank 0: the full states of this iteration to a ``.pth``, fsynced)."""

    save_seconds: dict[str, float]

    def save(self, name: str, **kwargs: Any) -> None:
        start = time.perf_counter()
        super().save(name, **kwargs)
        self.save_seconds[name] = time.perf_counter() - start


class Probe(HookBase):
    """Records when every iteration starts, and the per-rank storage after iteration ``probe_iter``."""

    def __init__(self, probe_iter: int) -> None:
        self.probe_iter = probe_iter
        self.starts: list[float] = []
        self.end = 0.0
        self.memory: dict[str, int] = {}

    def before_step(self) -> None:
        self.starts.append(time.perf_counter())

    def after_step(self) -> None:
        if self.trainer.iter != self.probe_iter:
            return
        model, optimizer = self.trainer.model, self.trainer.optimizer
        params = list(model.parameters())
        state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        self.memory = {
            "parameters": _nbytes(params),
            "gradients": _nbytes(p.grad for p in params if p.grad is not None),
            "optimizer state": _nbytes(state),
            "buffers": _nbytes(model.buffers()),
            "resident": _resident_bytes(),
            "local_numel": sum(_local(p).numel() for p in params),
            "numel": sum(p.numel() for p in params),
            "grads": sum(p.grad is not None for p in params),
        }

    def after_train(self) -> None:
        self.end = time.perf_counter()


def worker(out_dir: str, strategy: str, config: dict[str, Any]) -> None:
    """One rank of one run: train ``config["iters"]`` iterations with ``strategy``, write ``rank{r}.json``."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    torch.set_num_threads(config["threads"])
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    logging.getLogger("d2lightning").setLevel(logging.WARNING)
    rank = comm.get_rank()
    torch.manual_seed(rank)  # as detectron2 seeds ranks: both strategies start from rank 0's weights
    model = Detector(config["width"], config["blocks"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    trainer = TimedTrainer(model, rank_batches(rank), optimizer)
    trainer.gather_seconds = {}
    if strategy == "fsdp":
        trainer.lightning_kwargs = {"strategy": ModelParallelStrategy(data_parallel_size=WORLD, tensor_parallel_size=1)}
        trainer.sharding = FSDPSharding(min_params=config["min_params"])
    checkpointer = TimedCheckpointer(model, os.path.join(out_dir, "checkpoints"), optimizer=optimizer, trainer=trainer)
    checkpointer.save_seconds = {}
    probe = Probe(config["probe_iter"])
    trainer.register_hooks(
        [probe, hooks.PeriodicCheckpointer(checkpointer, config["period"]) if comm.is_main_process() else None]
    )
    before = _resident_bytes()
    trainer.train(0, config["iters"])
    probe.memory["resident before"] = before
    starts = [*probe.starts, probe.end]
    result = {
        "iteration_seconds": [b - a for a, b in itertools.pairwise(starts)],
        "memory": probe.memory,
        "gather_seconds": {str(k): v for k, v in trainer.gather_seconds.items()},
        "save_seconds": checkpointer.save_seconds,
    }
    path = Path(out_dir) / f"rank{rank}.json"
    path.with_suffix(".tmp").write_text(json.dumps(result))
    os.replace(path.with_suffix(".tmp"), path)


# ---------------------------------------------------------------- the parent: runs, loads, table
def run_once(root: str, strategy: str, repeat: int, config: dict[str, Any]) -> dict[str, Any]:
    """Launch one 2-process run; return its ranks' results and the periodic checkpoint's path."""
    out_dir = os.path.join(root, f"{strategy}{repeat}")
    os.makedirs(out_dir)
    launch(worker, WORLD, dist_url="auto", args=(out_dir, strategy, config))
    ranks = [json.loads((Path(out_dir) / f"rank{r}.json").read_text()) for r in range(WORLD)]
    checkpoint = os.path.join(out_dir, "checkpoints", f"model_{config['period'] - 1:07d}.pth")
    return {"ranks": ranks, "checkpoint": checkpoint}


def load_seconds(path: str, config: dict[str, Any]) -> float:
    """``DetectionCheckpointer.load`` (model and optimizer) of ``path`` into a freshly built model."""
    model = Detector(config["width"], config["blocks"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    checkpointer = DetectionCheckpointer(model, optimizer=optimizer)
    start = time.perf_counter()
    checkpointer.load(path)
    return time.perf_counter() - start


def summarize(run: dict[str, Any], config: dict[str, Any]) -> dict[str, float]:
    """One run's numbers: the largest rank's memory, rank 0's times."""
    ranks = run["ranks"]
    saved = config["period"] - 1  # the periodic checkpoint's iteration
    r0 = ranks[0]["iteration_seconds"]
    steady = [t for i, t in enumerate(r0) if i >= config["warmup"] and i not in (saved, saved + 1, len(r0) - 1)]
    iteration = statistics.median(steady)
    out = {key: max(r["memory"][key] for r in ranks) for key in ranks[0]["memory"]}
    out["total"] = out["parameters"] + out["gradients"] + out["optimizer state"]
    out["iteration"] = iteration
    out["checkpoint extra"] = r0[saved] - iteration
    out["gather"] = max(r["gather_seconds"][str(saved)] for r in ranks)
    out["save"] = ranks[0]["save_seconds"][f"model_{saved:07d}"]
    out["file"] = os.path.getsize(run["checkpoint"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params-millions", type=float, default=6.0, help="approximate model size")
    parser.add_argument("--blocks", type=int, default=4, help="residual MLP blocks")
    parser.add_argument("--iters", type=int, default=30, help="iterations per run")
    parser.add_argument("--warmup", type=int, default=5, help="iterations left out of the timing")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each strategy, alternating")
    parser.add_argument("--min-params", type=int, default=250_000, help="FSDPSharding(min_params=...)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--dir", default=None, help="where checkpoints are written (default: a temporary directory)")
    args = parser.parse_args()
    if args.iters < args.warmup + 8:
        parser.error("--iters must leave at least 8 iterations after the warm-up")
    logging.getLogger("d2lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    width, blocks = model_shape(args.params_millions, args.blocks)
    period = (args.warmup + args.iters) // 2 + 1  # one periodic checkpoint in the timed part, then the final one
    config = {
        "width": width,
        "blocks": blocks,
        "iters": args.iters,
        "warmup": args.warmup,
        "period": period,
        "probe_iter": args.warmup - 1,
        "min_params": args.min_params,
        "threads": args.threads,
    }
    reference = Detector(width, blocks)
    numel = sum(p.numel() for p in reference.parameters())
    units = FSDPSharding(min_params=args.min_params).plan(reference)

    begin = time.perf_counter()
    results: dict[str, list[dict[str, float]]] = {s: [] for s in STRATEGIES}
    loads: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        for repeat in range(args.repeats):
            order = STRATEGIES if repeat % 2 == 0 else STRATEGIES[::-1]
            runs = {s: run_once(root, s, repeat, config) for s in order}
            if repeat == 0:
                load_seconds(runs["ddp"]["checkpoint"], config)  # warm-up: first-call costs of loading
            for s in order:
                results[s].append(summarize(runs[s], config))
                loads[s].append(load_seconds(runs[s]["checkpoint"], config))
                for r in runs[s]["ranks"]:
                    assert r["memory"]["grads"] > 0, "no gradients at the probe"
    wall = time.perf_counter() - begin

    def med(strategy: str, key: str) -> float:
        return statistics.median(r[key] for r in results[strategy])

    fsdp_local = results["fsdp"][0]["local_numel"]
    print(
        f"\nDDP vs FSDP on {WORLD} CPU processes (gloo, {args.threads} thread(s) each): {numel / 1e6:.2f}M parameters "
        f"(width {width}, {blocks} blocks), AdamW, batch {BATCH} per rank, {args.iters} iterations x {args.repeats} "
        f"repeats\nFSDP units (min_params={args.min_params}): {units[:-1]} + the model itself; rank-local "
        f"parameters {fsdp_local / 1e6:.3f}M of {numel / 1e6:.3f}M"
    )
    header = f"{'':56s}{'DDP':>11s}{'FSDP':>11s}{'FSDP/DDP':>10s}"
    print(f"\nper-rank memory after iteration {args.warmup - 1} (MiB, largest rank, local storage)")
    print(header)
    for key in ("parameters", "gradients", "optimizer state", "total"):
        d, f = med("ddp", key) / MiB, med("fsdp", key) / MiB
        print(f"  {key:54s}{d:11.2f}{f:11.2f}{f / d:10.3f}")
    d, f = med("ddp", "buffers") / MiB, med("fsdp", "buffers") / MiB
    print(f"  {'buffers (not sharded, not in the total)':54s}{d:11.3f}{f:11.3f}")
    d, f = med("ddp", "resident before") / MiB, med("fsdp", "resident before") / MiB
    print(f"  {'process resident memory before train() (whole model)':54s}{d:11.1f}{f:11.1f}{f / d:10.3f}")
    d, f = med("ddp", "resident") / MiB, med("fsdp", "resident") / MiB
    print(f"  {'process resident memory at the probe':54s}{d:11.1f}{f:11.1f}{f / d:10.3f}")

    print(f"\ntime (median of {args.repeats} repeats; ms unless stated)")
    print(header)
    rows = [
        ("iteration", f"iteration (rank 0, median after {args.warmup} warm-up)"),
        ("checkpoint extra", f"iteration {period - 1} with a checkpoint, minus the median"),
        ("gather", "  of which gathering states (slowest rank)"),
        ("save", "  of which checkpointer.save (rank 0)"),
    ]
    for key, label in rows:
        d, f = med("ddp", key) * 1e3, med("fsdp", key) * 1e3
        print(f"  {label:54s}{d:11.1f}{f:11.1f}{f / d:10.2f}")
    d, f = statistics.median(loads["ddp"]) * 1e3, statistics.median(loads["fsdp"]) * 1e3
    print(f"  {'DetectionCheckpointer.load, fresh model + AdamW':54s}{d:11.1f}{f:11.1f}{f / d:10.2f}")
    d, f = med("ddp", "file") / MiB, med("fsdp", "file") / MiB
    print(f"  {'checkpoint file size (MiB)':54s}{d:11.2f}{f:11.2f}{f / d:10.3f}")
    for s in STRATEGIES:
        each = " ".join(f"{r['iteration'] * 1e3:.1f}" for r in results[s])
        print(f"  {s} iteration ms per repeat: {each}")
    print(f"\nwall time {wall:.0f} s")


if __name__ == "__main__":
    main()

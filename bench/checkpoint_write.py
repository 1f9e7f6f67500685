"""Checkpoint write (and load) time of ``Checkpointer``, for comparing two versions of d2lightning.

``python bench/checkpoint_write.py`` measures ``Checkpointer.save`` (the atomic ``.pth`` write, fsync and
``last_checkpoint``) and ``Checkpointer.load`` for models of fixed sizes, several repeats each, and prints the
medians. Run it once per version, e.g. ``PYTHONPATH=/path/to/other/checkout python bench/checkpoint_write.py``, on
a quiet machine: the disk and the page cache are shared with everything else. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from torch import nn

import d2lightning
from d2lightning.checkpoint import Checkpointer

SIZES = {"1.5 MB file (the demo detector)": 256, "100 MB file": 2040}  # name -> width of 3 Linear layers


def _model(width: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(3)])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, width)).sum().backward()
    optimizer.step()  # momentum buffers: the optimizer state doubles the file, as in training
    return model, optimizer


def _median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:8.1f} ms (min {min(samples) * 1000:.1f}, max {max(samples) * 1000:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = parser.parse_args()
    print(f"d2lightning from {os.path.dirname(d2lightning.__file__)}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory(dir=args.dir) as out:
        for name, width in SIZES.items():
            model, optimizer = _model(width)
            checkpointer = Checkpointer(model, out, optimizer=optimizer)
            checkpointer.save("warmup", iteration=0)
            saves, loads = [], []
            for i in range(args.repeats):
                start = time.perf_counter()
                checkpointer.save(f"model_{i:07d}", iteration=i)
                saves.append(time.perf_counter() - start)
                path = os.path.join(out, f"model_{i:07d}.pth")
                start = time.perf_counter()
                checkpointer.load(path)
                loads.append(time.perf_counter() - start)
            size = os.path.getsize(os.path.join(out, "model_0000000.pth")) / 2**20
            print(f"{name}: file {size:.1f} MiB")
            print(f"  save {_median_ms(saves)}")
            print(f"  load {_median_ms(loads)}")
            for f in os.listdir(out):
                os.remove(os.path.join(out, f))


if __name__ == "__main__":
    main()

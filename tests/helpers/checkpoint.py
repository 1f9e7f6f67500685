"""Helpers shared by the checkpoint tests: a position-seeded loader, a fit in either run mode, and ways to
damage a checkpoint file."""

from __future__ import annotations

import os
import pickle
import random
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from d2lightning.engine import D2LightningModule, SimpleTrainer
from d2lightning.engine.hook_base import as_callback
from tests.helpers.training import infinite_loader, lightning_trainer

MODES = ["simple", "lightning"]


def loader_from(start: int) -> Iterator[torch.Tensor]:
    """Batch ``i`` depends only on ``i``: a resumed run sees the batches an uninterrupted one would."""
    i = start
    while True:
        yield torch.rand(3, 3, generator=torch.Generator().manual_seed(i))
        i += 1


def new_trainer(model: torch.nn.Module, opt: torch.optim.Optimizer, loader: Any = None) -> SimpleTrainer:
    return SimpleTrainer(model, loader if loader is not None else infinite_loader(), opt)


def fit(
    mode: str, trainer: SimpleTrainer, hooks: list[Any], max_iter: int, start: int = 0, ckpt_path: Any = None
) -> None:
    """Train ``trainer`` with ``hooks``: ``trainer.train`` ("simple") or ``pl.Trainer.fit`` ("lightning")."""
    if mode == "simple":
        assert ckpt_path is None
        trainer.register_hooks(hooks)
        trainer.train(start, max_iter)
    else:
        assert start == 0, "a Lightning fit starts at 0 or at its checkpoint"
        pl_trainer = lightning_trainer(max_iter, [as_callback(h) for h in hooks])
        pl_trainer.fit(D2LightningModule(trainer=trainer), ckpt_path=ckpt_path)


def files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# ---- damaging a checkpoint file, as disks, kills and users do -------------------------------------------------


def _data_offset(path: Path, record: str) -> int:
    """Where the bytes of zip record ``record`` start in ``path``."""
    with zipfile.ZipFile(path) as archive:
        offset = archive.getinfo(record).header_offset
    header = path.read_bytes()[offset : offset + 30]
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return offset + 30 + name_length + extra_length


def _largest_tensor(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        tensors = [i for i in archive.infolist() if "/data/" in i.filename]
        return max(tensors, key=lambda i: i.file_size).filename


def flip_bytes(path: Path) -> None:
    """Invert 64 bytes inside the largest tensor's data (or up to its end, for a small one)."""
    data = bytearray(path.read_bytes())
    record = _largest_tensor(path)
    with zipfile.ZipFile(path) as archive:
        size = archive.getinfo(record).file_size
    start = _data_offset(path, record)
    end = start + min(64, size)
    data[start:end] = bytes(b ^ 0xFF for b in data[start:end])
    path.write_bytes(bytes(data))


def random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(path.stat().st_size))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def plain_text(path: Path) -> None:
    path.write_text("this is not a checkpoint\n")


def plain_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"model": {"w": [1.0, 2.0]}}))

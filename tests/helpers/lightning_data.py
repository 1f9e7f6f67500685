"""Lightning-side test data: indexed samples, a model that records them, a datamodule, an endless stream."""

from __future__ import annotations

import itertools
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from d2lightning.engine import D2LightningModule


class Indexed(Dataset):
    """Sample ``i`` is ``(i, features of i)``: the model records which samples it trained on."""

    def __init__(self, n: int = 16) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return torch.tensor(i), torch.rand(3, generator=g)


class IndexModel(nn.Module):
    """detectron2-style: a batch in, a dict of losses out; remembers the sample indices and dtypes it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.seen: list[int] = []
        self.dtypes: list[torch.dtype] = []
        self.eval_batches = 0

    def forward(self, batch: Any) -> Any:
        index, x = batch
        if not self.training:
            self.eval_batches += 1
            return self.linear(x)
        self.seen += index.tolist()
        self.dtypes.append(x.dtype)
        return {"loss_mse": (self.linear(x) - 1).pow(2).mean()}


class DataModule(pl.LightningDataModule):
    def __init__(self, n: int = 16, batch_size: int = 4, val: bool = False) -> None:
        super().__init__()
        self.n, self.batch_size, self.val = n, batch_size, val

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Indexed(self.n), batch_size=self.batch_size)

    def val_dataloader(self) -> Any:
        return DataLoader(Indexed(4), batch_size=2) if self.val else []


def module_without_loader(**kwargs: Any) -> D2LightningModule:
    model = IndexModel()
    return D2LightningModule(model, None, torch.optim.SGD(model.parameters(), 0.1), **kwargs)


def endless(seed: int = 0) -> Any:
    """A detectron2-style endless stream of ``(index, x)`` batches of 2."""
    for i in itertools.count():
        g = torch.Generator().manual_seed(1000 + i)
        yield torch.tensor([-1, -1]), torch.rand(2, 3, generator=g)

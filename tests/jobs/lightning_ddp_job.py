"""A Lightning user's script: ``pl.Trainer(devices=2, strategy="ddp")`` fits ``D2LightningModule(model, None,
optimizer)`` on a plain map-style DataLoader of 16 indexed samples.

``python tests/jobs/lightning_ddp_job.py OUT`` (Lightning's DDP launcher runs the script again for rank 1). Each rank
writes the sample indices its model trained on to ``OUT/rank{r}.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from d2lightning.engine import D2LightningModule
from tests.helpers.distributed import write_result


class Indexed(Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(i), torch.full((3,), float(i) / 16)


class IndexModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.seen: list[int] = []

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        index, x = batch
        self.seen += index.tolist()
        return {"loss_mse": (self.linear(x) - 1).pow(2).mean()}


def main(out: str) -> None:
    torch.manual_seed(0)
    model = IndexModel()
    module = D2LightningModule(model, None, torch.optim.SGD(model.parameters(), 0.1))
    trainer = pl.Trainer(
        max_steps=4,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=DataLoader(Indexed(), batch_size=2))
    weight = [round(float(w), 6) for w in model.linear.weight.detach().flatten()]
    write_result(out, trainer.global_rank, {"seen": model.seen, "global_step": trainer.global_step, "weight": weight})
    # Lightning leaves its gloo group alive; exiting with it aborts now and then ("terminate called without an
    # active exception", about 1 run in 12 with a plain LightningModule too), so end it as a careful script does
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

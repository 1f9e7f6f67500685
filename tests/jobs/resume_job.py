"""A training that draws random numbers everywhere, for the exact-resume tests.

``python tests/jobs/resume_job.py OUT MAX_ITER`` (``NPROC`` processes through ``launch``, ``WORKERS`` DataLoader
workers, both from the environment). The model has dropout and samples a random subset of its outputs for the
loss; the dataset flips samples at random (numpy) and jitters them (torch) in the DataLoader's workers, or in the
main process without workers. Each process seeds its generators with ``SEED + rank`` as ``default_setup`` does,
resumes from ``OUT``'s last checkpoint when there is one, and at the end the main process saves the weights and
optimizer state to ``OUT/final.pt``. ``RANK0_ONLY=1`` registers the checkpointer hook on the main process only, as
detectron2's own scripts do.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import torch
from torch import nn

SEED = 7


class Noisy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4))

    def forward(self, batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        x = torch.stack([d["x"] for d in batch])
        out = self.net(x)
        picked = torch.randperm(out.shape[1])[:2]  # random sampling inside the loss
        return {"loss_a": out[:, picked].pow(2).mean(), "loss_b": (out.mean() - 1).abs()}


class Flipping(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, Any]:
        x = torch.arange(6, dtype=torch.float32) * (i + 1) / 64
        if np.random.rand() < 0.5:
            x = x.flip(0)
        return {"x": x + 0.1 * torch.randn(6)}


def main(out: str, max_iter: int, workers: int) -> None:
    from d2lightning.checkpoint import DetectionCheckpointer
    from d2lightning.data.build import build_batch_data_loader
    from d2lightning.data.samplers import TrainingSampler
    from d2lightning.engine import SimpleTrainer, hooks
    from d2lightning.utils import comm
    from d2lightning.utils.env import seed_all_rng

    seed_all_rng(SEED + comm.get_rank())
    model = Noisy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batch = 4 * comm.get_world_size()
    data = build_batch_data_loader(Flipping(), TrainingSampler(64, seed=SEED), batch, num_workers=workers)
    trainer = SimpleTrainer(model, data, optimizer)
    checkpointer = DetectionCheckpointer(model, out, optimizer=optimizer, trainer=trainer)
    rank0_only = os.environ.get("RANK0_ONLY", "0") == "1"  # as detectron2's lazyconfig_train_net.py registers it
    periodic = hooks.PeriodicCheckpointer(checkpointer, 10)
    trainer.register_hooks([periodic if comm.is_main_process() or not rank0_only else None])
    checkpointer.resume_or_load("", resume=True)
    start = trainer.iter + 1 if checkpointer.has_checkpoint() else 0
    trainer.train(start, max_iter)
    if comm.is_main_process():
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, os.path.join(out, "final.pt"))


if __name__ == "__main__":
    out_dir, iters = sys.argv[1], int(sys.argv[2])
    nproc = int(os.environ.get("NPROC", "1"))
    num_workers = int(os.environ.get("WORKERS", "0"))
    if nproc > 1:
        from d2lightning.engine import launch

        launch(main, nproc, dist_url="auto", args=(out_dir, iters, num_workers))
    else:
        main(out_dir, iters, num_workers)

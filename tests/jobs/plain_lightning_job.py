"""A Lightning user's script that configures no logging: ``python tests/jobs/plain_lightning_job.py [basicConfig]``.

Builds an LR schedule whose warmup outlasts the run (a d2lightning warning, logged before any fit), then fits a
``D2LightningModule`` with ``IterationTimer`` (whose summary detectron2 logs at INFO) in a plain
``lightning.pytorch.Trainer``. With ``basicConfig``, the script configures logging itself after its imports
(``logging.basicConfig(level=INFO)``), as many scripts do. Prints, last, the ``d2lightning`` logger's state after
the fit (``handlers=N level=L``).
"""

from __future__ import annotations

import logging
import sys

import lightning.pytorch as pl
import torch

from d2lightning import D2LightningModule
from d2lightning.config import get_cfg
from d2lightning.engine import hooks
from d2lightning.solver import build_lr_scheduler
from tests.helpers.training import SimpleModel, infinite_loader


def main() -> None:
    if sys.argv[1:] == ["basicConfig"]:
        logging.basicConfig(level=logging.INFO, format="configured %(levelname)s %(name)s: %(message)s")
    model = SimpleModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "10", "SOLVER.STEPS", "()"])
    scheduler = build_lr_scheduler(cfg, optimizer)
    trainer = pl.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[hooks.IterationTimer(), hooks.LRScheduler(optimizer, scheduler)],
    )
    trainer.fit(D2LightningModule(model, infinite_loader(), optimizer))
    d2 = logging.getLogger("d2lightning")
    print(f"handlers={len(d2.handlers)} level={d2.level}")


if __name__ == "__main__":
    main()

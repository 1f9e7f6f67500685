"""A detectron2-style training on d2lightning, for the exact-resume tests against a real detectron2.

``python tests/jobs/d2_resume_job.py OUT MAX_ITER`` with ``SAMPLER`` (detectron2's sampler name), ``WORKERS``
(DataLoader workers) and ``NPROC`` (processes through d2lightning's ``launch``) from the environment. As
detectron2's own scripts do it: detectron2's ``build_detection_train_loader`` (``DatasetMapper`` with
``ResizeShortestEdge`` + ``RandomFlip``, aspect-ratio grouping) over a synthetic dataset of small images written to
``OUT/images``, ``create_ddp_model``, detectron2's ``DetectionCheckpointer(model, OUT, trainer=trainer)`` and its
``PeriodicCheckpointer`` hook on the main process only; ``SimpleTrainer`` and ``launch`` are d2lightning's. The model
has dropout. Every process seeds its generators with ``SEED + rank`` (``seed_all_rng``), resumes from ``OUT``'s last
checkpoint when there is one, and the main process saves the final weights to ``OUT/final.pt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

SEED = 11
DATASET = "d2lightning_resume_job"
SIZES = [(40, 30), (30, 40), (48, 32), (32, 48), (36, 36)]  # width, height


class Pooled(nn.Module):
    """detectron2-style: a list of dataset dicts in, a dict of losses out; pools each image, dropout inside."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))

    def forward(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pooled = torch.stack([d["image"].float().mean(dim=(1, 2)) / 255 for d in batch])
        classes = torch.stack([d["instances"].gt_classes[0] for d in batch])
        return {"loss_cls": nn.functional.cross_entropy(self.net(pooled), classes)}


def register_dataset(root: Path) -> None:
    """30 noise images, 5 sizes, one box each, classes of uneven frequency (so the repeat-factor sampler repeats)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    noise = np.random.RandomState(0)
    dicts = []
    for i in range(30):
        width, height = SIZES[i % 5]
        path = root / f"{i}.png"
        pixels = noise.randint(0, 255, (height, width, 3), dtype=np.uint8)
        if not path.exists():
            Image.fromarray(pixels).save(path)
        category = 2 if i % 10 == 0 else int(i % 3 == 0)
        box = {"bbox": [2, 3, 20, 18], "bbox_mode": BoxMode.XYXY_ABS, "category_id": category, "iscrowd": 0}
        dicts.append({"file_name": str(path), "image_id": i, "width": width, "height": height, "annotations": [box]})
    if DATASET in DatasetCatalog.list():
        DatasetCatalog.remove(DATASET)
        MetadataCatalog.remove(DATASET)
    DatasetCatalog.register(DATASET, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(DATASET).set(thing_classes=["a", "b", "c"])


def main(out: str, max_iter: int, sampler: str, workers: int) -> None:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.data import build_detection_train_loader
    from detectron2.engine import hooks as d2_hooks

    from d2lightning.engine import SimpleTrainer, create_ddp_model
    from d2lightning.utils import comm
    from d2lightning.utils.env import seed_all_rng

    register_dataset(Path(out) / "images")
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (DATASET,)
    cfg.INPUT.MIN_SIZE_TRAIN = (24, 32, 40)
    cfg.INPUT.MAX_SIZE_TRAIN = 80
    cfg.INPUT.RANDOM_FLIP = "horizontal"
    cfg.SOLVER.IMS_PER_BATCH = 3 * comm.get_world_size()
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.DATALOADER.SAMPLER_TRAIN = sampler
    cfg.DATALOADER.REPEAT_THRESHOLD = 0.3
    cfg.DATALOADER.RANDOM_SUBSET_RATIO = 0.6
    cfg.SEED = SEED
    seed_all_rng(SEED + comm.get_rank())
    model = Pooled()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = build_detection_train_loader(cfg)
    model = create_ddp_model(model, broadcast_buffers=False)
    trainer = SimpleTrainer(model, loader, optimizer)
    checkpointer = DetectionCheckpointer(model, out, trainer=trainer, optimizer=optimizer)
    period = int(os.environ.get("PERIOD", "6"))
    trainer.register_hooks([d2_hooks.PeriodicCheckpointer(checkpointer, period) if comm.is_main_process() else None])
    checkpointer.resume_or_load("", resume=True)
    start = trainer.iter + 1 if checkpointer.has_checkpoint() else 0
    trainer.train(start, max_iter)
    if comm.is_main_process():
        inner = model.module if hasattr(model, "module") else model
        torch.save({"model": inner.state_dict(), "optimizer": optimizer.state_dict()}, os.path.join(out, "final.pt"))


if __name__ == "__main__":
    out_dir, iters = sys.argv[1], int(sys.argv[2])
    args = (out_dir, iters, os.environ.get("SAMPLER", "TrainingSampler"), int(os.environ.get("WORKERS", "0")))
    nproc = int(os.environ.get("NPROC", "1"))
    if nproc > 1:
        from d2lightning.engine import launch

        launch(main, nproc, dist_url="auto", args=args)
    else:
        main(*args)

"""Module-level workers of the detectron2 FSDP test (2 CPU processes under ``launch``, gloo): spawned processes import
them.

detectron2's own Mask R-CNN (``GeneralizedRCNN`` from ``build_model`` and a model-zoo config, shrunk to ResNet-18, 64
FPN channels and 2 classes) trains with d2lightning's ``SimpleTrainer`` on fixed synthetic batches, sharded (FSDP2
on Lightning's ``ModelParallelStrategy``) or with DDP; detectron2 is imported inside the functions only, so that the
test module imports this file without it. Each worker writes ``rank{r}.json`` (see
:func:`tests.helpers.distributed.write_result`); the main process's checkpointer writes ``run/model_final.pth``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tests.helpers.distributed import write_result
from tests.helpers.sharding import ShardProbe

MAX_ITER = 4
IMAGE_SIZE = 64
#: the model's sharding units: the trainable ResNet stages, the frozen one (FREEZE_AT 2: stem and res2, every norm a
#: FrozenBatchNorm2d whose statistics are buffers), and the box and mask heads
UNITS = [
    "backbone.bottom_up.res2",
    "backbone.bottom_up.res3",
    "backbone.bottom_up.res4",
    "backbone.bottom_up.res5",
    "roi_heads",
]
MODEL_ZOO_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
OVERRIDES = [
    "MODEL.DEVICE", "cpu",
    "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.PIXEL_STD", "[57.375,57.120,58.395]",  # the zoo's [1,1,1] suits its pretrained weights only: NaN here
    "MODEL.FPN.OUT_CHANNELS", "64",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "256",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "64",
    "MODEL.ROI_HEADS.NUM_CLASSES", "2",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "64",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "32",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "200",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "32",
    "INPUT.MIN_SIZE_TRAIN", f"({IMAGE_SIZE},)",
    "INPUT.MAX_SIZE_TRAIN", str(2 * IMAGE_SIZE),
    "INPUT.MIN_SIZE_TEST", str(IMAGE_SIZE),
    "INPUT.MAX_SIZE_TEST", str(2 * IMAGE_SIZE),
    "SOLVER.BASE_LR", "0.01",
    "SOLVER.IMS_PER_BATCH", "4",
]  # fmt: skip


def small_mask_rcnn_cfg() -> Any:
    """detectron2's ``CfgNode``: the model-zoo Mask R-CNN R50-FPN config with :data:`OVERRIDES`."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(MODEL_ZOO_CONFIG))
    cfg.merge_from_list(OVERRIDES)
    return cfg


def small_mask_rcnn(seed: int) -> nn.Module:
    """detectron2's ``build_model`` of :func:`small_mask_rcnn_cfg`, its random initialization drawn after ``seed``."""
    from detectron2.modeling import build_model

    torch.manual_seed(seed)
    return build_model(small_mask_rcnn_cfg())


def rank_batch(rank: int, images: int = 2) -> list[dict[str, Any]]:
    """``images`` noise images of one rank in detectron2's input format, each with a bright square (class 0) and a
    dark bar (class 1): their boxes, classes and ``BitMasks``; the same for the same ``rank``."""
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(100 + rank)
    batch = []
    for i in range(images):
        image = torch.randint(60, 120, (3, IMAGE_SIZE, IMAGE_SIZE), generator=g, dtype=torch.uint8)
        x, y = 4 + 6 * i + 3 * rank, 6 + 4 * i
        bar = 8 + 4 * i + 2 * rank
        boxes = [(x, y, x + 24, y + 24), (bar, 40, bar + 36, 56)]
        masks = torch.zeros(len(boxes), IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            image[:, y0:y1, x0:x1] = 230 if k == 0 else 10
            masks[k, y0:y1, x0:x1] = True
        instances = Instances((IMAGE_SIZE, IMAGE_SIZE))
        instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.gt_classes = torch.tensor([0, 1])
        instances.gt_masks = BitMasks(masks)
        batch.append({"image": image, "height": IMAGE_SIZE, "width": IMAGE_SIZE, "instances": instances})
    return batch


def rank_batches(rank: int) -> Any:
    """Every rank its own fixed batch, endlessly."""
    batch = rank_batch(rank)
    while True:
        yield batch


def mask_rcnn(out_dir: str, strategy: str) -> None:
    """``MAX_ITER`` iterations of :func:`small_mask_rcnn` with detectron2's ``build_optimizer`` (SGD, momentum,
    weight decay), sharded by :data:`UNITS` (``strategy`` "fsdp") or with DDP ("ddp"); d2lightning's
    ``DetectionCheckpointer`` and ``PeriodicCheckpointer`` on the main process only, as detectron2's scripts do."""
    from detectron2.solver import build_optimizer
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.distributed.fsdp import FSDPModule

    from d2lightning.checkpoint import DetectionCheckpointer
    from d2lightning.engine import FSDPSharding, SimpleTrainer, hooks
    from d2lightning.utils import comm

    torch.set_num_threads(1)  # 2 processes on a small CPU
    rank = comm.get_rank()
    model = small_mask_rcnn(seed=rank)  # the ranks build different models: rank 0's must win, as under DDP
    initial = float(sum(p.detach().double().sum() for p in model.parameters()))
    optimizer = build_optimizer(small_mask_rcnn_cfg(), model)
    torch.manual_seed(1000 + rank)  # the RPN and ROI samplers draw from the global generator: the same in both runs
    trainer = SimpleTrainer(model, rank_batches(rank), optimizer)
    if strategy == "fsdp":
        trainer.lightning_kwargs = {"strategy": ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)}
        trainer.sharding = FSDPSharding(units=UNITS)
    checkpointer = DetectionCheckpointer(model, os.path.join(out_dir, "run"), optimizer=optimizer, trainer=trainer)
    seen: dict[str, Any] = {}

    trainer.register_hooks(
        [ShardProbe(seen), hooks.PeriodicCheckpointer(checkpointer, MAX_ITER) if comm.is_main_process() else None]
    )
    trainer.train(0, MAX_ITER)
    total_loss = trainer.storage.histories().get("total_loss")  # the main process's: the ranks' mean
    write_result(
        out_dir,
        rank,
        {
            "initial": initial,
            "iter": trainer.iter,
            "losses": [v for v, _ in total_loss.values()] if total_loss is not None else [],
            "units": [name for name, m in model.named_modules() if isinstance(m, FSDPModule)],
            **seen,
        },
    )


def run(out_dir: str, job: str, *args: Any) -> None:
    """Dispatch by name (the spawned workers get plain arguments)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    jobs = {"mask_rcnn": mask_rcnn}
    jobs[job](out_dir, *args)

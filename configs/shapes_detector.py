# The built-in demo as a Python "LazyConfig" (detectron2's newer config format): the same model, data, solver
# and schedule as shapes_detector.yaml beside it, trained by detectron2's lazyconfig_train_net.py recipe
# (IterationTimer, LRScheduler, PeriodicCheckpointer, EvalHook, PeriodicWriter; no PreciseBN):
#
#     d2lightning train --config-file shapes_detector.py
#     d2lightning train --config-file shapes_detector.py train.max_iter=100 optimizer.lr=0.02
#
# Every value is an ordinary Python object: edit it, import it from another config file
# (`from .shapes_detector import model`), or override it on the command line as a.b=c.
import torch

import d2lightning.data.datasets as builtin_datasets  # a module: not part of the config
from d2lightning.config import LazyCall as L
from d2lightning.data import DatasetMapper, build_detection_test_loader, build_detection_train_loader
from d2lightning.data.build import get_detection_dataset_dicts
from d2lightning.data.samplers import TrainingSampler
from d2lightning.data.transforms import RandomFlip, ResizeShortestEdge
from d2lightning.evaluation import COCOEvaluator
from d2lightning.modeling.meta_arch.shapes_detector import ShapesDetector
from d2lightning.solver import CosineParamScheduler, WarmupParamScheduler, get_default_optimizer_params

MAX_ITER = 600
WARMUP_ITERS = 100

model = L(ShapesDetector)(
    num_classes=3,  # circle, square, triangle
    backbone_widths=[16, 32, 64, 96],
    head_width=32,
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[57.375, 57.120, 58.395],
    input_format="BGR",
    score_thresh_test=0.05,
    detections_per_image=100,
)

dataloader = dict(
    train=L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names="shapes_train"),
        mapper=L(DatasetMapper)(
            is_train=True,
            augmentations=[
                L(ResizeShortestEdge)(short_edge_length=[96], max_size=96, sample_style="choice"),
                L(RandomFlip)(horizontal=True, vertical=False),
            ],
            image_format="BGR",
        ),
        sampler=L(TrainingSampler)(size=builtin_datasets.BUILTIN_SHAPES["shapes_train"][1], seed="${train.seed}"),
        total_batch_size=16,
        num_workers=0,  # measured faster than 1 worker on 2 cores
    ),
    test=L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names="shapes_val", filter_empty=False),  # 200 held-out images
        mapper=L(DatasetMapper)(
            is_train=False,
            augmentations=[L(ResizeShortestEdge)(short_edge_length=[96], max_size=96, sample_style="choice")],
            image_format="BGR",
        ),
        num_workers=0,
    ),
    evaluator=L(COCOEvaluator)(dataset_name="shapes_val", output_dir="${train.output_dir}/inference"),
)

optimizer = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),  # params.model is set by the trainer
    lr=0.05,
    momentum=0.9,
    weight_decay=1e-4,
    nesterov=False,
    foreach=True,
)

# the learning rate multiplier per iteration: linear warmup, then half a cosine down to 0
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
    warmup_length=WARMUP_ITERS / MAX_ITER,  # a fraction of train.max_iter: override both together
    warmup_factor=0.001,
    warmup_method="linear",
)

train = dict(
    output_dir="./output/shapes_detector_lazy",
    init_checkpoint="",  # "" = random initialisation
    max_iter=MAX_ITER,
    amp=dict(enabled=False),  # AMPTrainer (bfloat16 on CPU) when True
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    # d2lightning: shard the model with FSDP2 instead of DDP (2+ processes: --num-gpus N); docs/distributed.md
    fsdp=dict(enabled=False, units=[], min_params=1_000_000, reshard_after_forward=True),
    checkpointer=dict(period=200, max_to_keep=100),
    eval_period=200,
    log_period=20,
    device="cpu",
    seed=0,
)

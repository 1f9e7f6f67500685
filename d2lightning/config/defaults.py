"""The built-in default config tree: detectron2's ``detectron2/config/defaults.py`` keys plus d2lightning's.

Every key that detectron2's engine, solver and data loading read is here with detectron2's name and default
value (detectron2 HEAD, ``VERSION = 2``). Architecture-specific ``MODEL.*`` keys (``MODEL.RPN``,
``MODEL.ROI_HEADS``, ...) are not: a model declares its own with
:func:`d2lightning.config.extend_defaults`, and when detectron2 is installed its whole default tree is added
the same way, so detectron2 model-zoo files load as they are. The one exception is the built-in demo
architecture's ``MODEL.SHAPES_DETECTOR`` (kept here as detectron2 keeps its built-in architectures' keys in its
``defaults.py``), so that ``get_cfg()`` imports no model code, hence no torch.

d2lightning-only keys: ``SOLVER.OPTIMIZER``, ``SOLVER.CHECKPOINT_MAX_TO_KEEP`` (detectron2 issue #1803) and
the ``LIGHTNING`` section (what only Lightning has). A leaf is either a plain default or a
:class:`~d2lightning.config.spec.KeySpec` when it accepts several types or has a fixed domain.
"""

from __future__ import annotations

from typing import Any

from d2lightning.config import validators as v
from d2lightning.config.spec import KeySpec

__all__ = ["BUILTIN_DEFAULTS", "BUILTIN_SOURCE", "SHAPES_DETECTOR_KEYS"]

BUILTIN_SOURCE = "d2lightning.config.defaults"

SHAPES_DETECTOR_KEYS: dict[str, Any] = {
    "NUM_CLASSES": 3,
    "BACKBONE_WIDTHS": [16, 32, 64, 96],
    "HEAD_WIDTH": 32,
    "GAUSSIAN_ALPHA": 0.54,
    "HEATMAP_LOSS_WEIGHT": 1.0,
    "BOX_LOSS_WEIGHT": 5.0,
    "SCORE_THRESH_TEST": 0.05,
    "DETECTIONS_PER_IMAGE": 100,
}
"""``MODEL.SHAPES_DETECTOR``: the keys of the demo's ``ShapesDetector`` (``d2lightning.modeling``), defaults."""

_MODEL: dict[str, Any] = {
    "LOAD_PROPOSALS": False,
    "MASK_ON": False,
    "KEYPOINT_ON": False,
    "DEVICE": "cuda",
    "META_ARCHITECTURE": "GeneralizedRCNN",
    # A path or URL of a checkpoint to initialise the model from ("" = none).
    "WEIGHTS": "",
    # Per-channel normalisation, in INPUT.FORMAT order (BGR by default): ImageNet mean, std 1 (MSRA models).
    "PIXEL_MEAN": [103.530, 116.280, 123.675],
    "PIXEL_STD": [1.0, 1.0, 1.0],
    "SHAPES_DETECTOR": SHAPES_DETECTOR_KEYS,
}

_INPUT: dict[str, Any] = {
    # Shortest-edge resize (ResizeShortestEdge): sizes to choose from ("choice") or a [min, max] ("range").
    "MIN_SIZE_TRAIN": (800,),
    "MIN_SIZE_TRAIN_SAMPLING": "choice",
    "MAX_SIZE_TRAIN": 1333,
    "MIN_SIZE_TEST": 800,  # 0 disables test-time resizing
    "MAX_SIZE_TEST": 1333,
    "RANDOM_FLIP": "horizontal",  # "horizontal", "vertical" or "none"
    "CROP": {"ENABLED": False, "TYPE": "relative_range", "SIZE": [0.9, 0.9]},
    "FORMAT": "BGR",  # a PIL mode, or BGR
    "MASK_FORMAT": "polygon",  # or "bitmask"
}

_DATASETS: dict[str, Any] = {
    "TRAIN": (),  # registered dataset names, concatenated for training
    "PROPOSAL_FILES_TRAIN": (),
    "PRECOMPUTED_PROPOSAL_TOPK_TRAIN": 2000,
    "TEST": (),  # each is evaluated separately
    "PROPOSAL_FILES_TEST": (),
    "PRECOMPUTED_PROPOSAL_TOPK_TEST": 1000,
}

_DATALOADER: dict[str, Any] = {
    "NUM_WORKERS": 4,
    "ASPECT_RATIO_GROUPING": True,
    "SAMPLER_TRAIN": "TrainingSampler",  # or "RepeatFactorTrainingSampler"
    "REPEAT_THRESHOLD": 0.0,
    "REPEAT_SQRT": True,
    "FILTER_EMPTY_ANNOTATIONS": True,
}

_SOLVER: dict[str, Any] = {
    "LR_SCHEDULER_NAME": "WarmupMultiStepLR",  # or WarmupCosineLR, WarmupStepWithFixedGammaLR
    "MAX_ITER": 40000,
    "BASE_LR": 0.001,
    "BASE_LR_END": 0.0,  # final lr of WarmupCosineLR
    "MOMENTUM": 0.9,
    "NESTEROV": False,
    "WEIGHT_DECAY": 0.0001,
    "WEIGHT_DECAY_NORM": 0.0,  # for the affine parameters of normalisation layers
    "GAMMA": 0.1,
    "STEPS": (30000,),  # iterations at which the lr is multiplied by GAMMA
    "NUM_DECAYS": 3,  # WarmupStepWithFixedGammaLR
    "WARMUP_FACTOR": 1.0 / 1000,
    "WARMUP_ITERS": 1000,
    "WARMUP_METHOD": KeySpec("linear", validator=v.one_of("linear", "constant")),
    "RESCALE_INTERVAL": False,
    "CHECKPOINT_PERIOD": 5000,
    "IMS_PER_BATCH": 16,  # total over all processes
    "REFERENCE_WORLD_SIZE": 0,  # != 0: DefaultTrainer.auto_scale_workers rescales batch, lr and schedule
    "BIAS_LR_FACTOR": 1.0,
    "WEIGHT_DECAY_BIAS": KeySpec(None, types=(float,)),  # None: same as WEIGHT_DECAY
    "CLIP_GRADIENTS": {
        "ENABLED": False,
        "CLIP_TYPE": KeySpec("value", validator=v.one_of("value", "norm")),
        "CLIP_VALUE": 1.0,
        "NORM_TYPE": 2.0,  # p of the L-p norm for CLIP_TYPE "norm"; .inf for max-norm
    },
    "AMP": {"ENABLED": False},
    # d2lightning: which torch optimizer build_optimizer makes ("SGD" as detectron2, or "ADAMW").
    "OPTIMIZER": KeySpec("SGD", validator=v.check_optimizer),
    # d2lightning: how many periodic checkpoints to keep (0 = all, detectron2's behaviour; issue #1803).
    "CHECKPOINT_MAX_TO_KEEP": KeySpec(0, validator=v.int_at_least(0)),
}

_TEST: dict[str, Any] = {
    "EXPECTED_RESULTS": [],  # [[task, metric, value, tolerance], ...] checked after training
    "EVAL_PERIOD": 0,  # 0: evaluate only after the last iteration
    "KEYPOINT_OKS_SIGMAS": [],
    "DETECTIONS_PER_IMAGE": 100,
    "AUG": {
        "ENABLED": False,
        "MIN_SIZES": (400, 500, 600, 700, 800, 900, 1000, 1100, 1200),
        "MAX_SIZE": 4000,
        "FLIP": True,
    },
    "PRECISE_BN": {"ENABLED": False, "NUM_ITER": 200},
}

# d2lightning: settings that only exist on the Lightning side, named after lightning.Trainer's arguments.
_LIGHTNING: dict[str, Any] = {
    "PRECISION": KeySpec("32-true", types=(str, int), validator=v.check_precision),
    "ACCELERATOR": KeySpec("auto", validator=v.check_accelerator),
    "DEVICES": KeySpec("auto", types=(str, int, list), validator=v.check_devices),
    "NUM_NODES": KeySpec(1, validator=v.int_at_least(1)),
    "STRATEGY": KeySpec("auto", validator=v.check_strategy),
    "ACCUMULATE_GRAD_BATCHES": KeySpec(1, validator=v.int_at_least(1)),
    # Extra Lightning loggers / callbacks: "pkg.Class" or {class_path: "pkg.Class", init_args: {...}}.
    "LOGGERS": KeySpec([], validator=v.check_class_entries),
    "CALLBACKS": KeySpec([], validator=v.check_class_entries),
    "EMA": {
        "ENABLED": False,
        "DECAY": KeySpec(0.999, validator=v.check_unit_interval),
    },
    "PROGRESS_BAR": True,
    "LOG_EVERY_N_STEPS": KeySpec(20, validator=v.int_at_least(1)),
    "DETERMINISTIC": KeySpec(False, types=(bool, str), validator=v.check_deterministic),
    # Sharded training (STRATEGY "fsdp": FSDP2 on Lightning's ModelParallelStrategy); see docs/distributed.md.
    "FSDP": {
        "UNITS": KeySpec([], types=(list, tuple), validator=v.check_names),  # [] : by size (MIN_PARAMS)
        "MIN_PARAMS": KeySpec(1_000_000, validator=v.int_at_least(1)),
        "RESHARD_AFTER_FORWARD": True,
        "PARAM_DTYPE": KeySpec("", validator=v.one_of("", "float32", "bfloat16", "float16")),
        "REDUCE_DTYPE": KeySpec("", validator=v.one_of("", "float32", "bfloat16", "float16")),
    },
}

BUILTIN_DEFAULTS: dict[str, Any] = {
    "VERSION": 2,  # config format version (detectron2's); older files are upgraded (config/compat.py)
    "MODEL": _MODEL,
    "INPUT": _INPUT,
    "DATASETS": _DATASETS,
    "DATALOADER": _DATALOADER,
    "SOLVER": _SOLVER,
    "TEST": _TEST,
    "OUTPUT_DIR": "./output",
    "SEED": -1,  # < 0: a random seed, logged
    "CUDNN_BENCHMARK": False,
    # "" leaves torch's default; else torch.set_float32_matmul_precision(...) ("highest" disables tf32).
    "FLOAT32_PRECISION": KeySpec("", validator=v.one_of("", "highest", "high", "medium")),
    "VIS_PERIOD": 0,
    "GLOBAL": {"HACK": 1.0},  # detectron2's scratch space for quick experiments
    "LIGHTNING": _LIGHTNING,
}

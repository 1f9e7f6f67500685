"""detectron2 ``data/samplers``."""

from d2lightning.data.samplers.distributed_sampler import InferenceSampler, TrainingSampler

__all__ = ["InferenceSampler", "TrainingSampler"]

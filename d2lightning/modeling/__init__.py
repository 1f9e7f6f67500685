"""detectron2 ``modeling``: model registry, ``build_model`` and the demo's ``ShapesDetector``."""

from d2lightning.modeling.meta_arch import (
    META_ARCH_REGISTRY,
    SHAPES_DETECTOR_DEFAULTS,
    ShapesDetector,
    build_model,
)
from d2lightning.modeling.postprocessing import detector_postprocess
from d2lightning.modeling.registry import Registry

__all__ = [
    "META_ARCH_REGISTRY",
    "SHAPES_DETECTOR_DEFAULTS",
    "Registry",
    "ShapesDetector",
    "build_model",
    "detector_postprocess",
]

"""detectron2 ``modeling/meta_arch``: the registry, ``build_model`` and the built-in ``ShapesDetector``."""

from d2lightning.modeling.meta_arch.build import META_ARCH_REGISTRY, build_model
from d2lightning.modeling.meta_arch.shapes_detector import SHAPES_DETECTOR_DEFAULTS, ShapesDetector

__all__ = ["META_ARCH_REGISTRY", "SHAPES_DETECTOR_DEFAULTS", "ShapesDetector", "build_model"]

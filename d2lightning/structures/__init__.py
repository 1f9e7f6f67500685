"""detectron2 ``structures``: boxes, per-image instances and padded image batches."""

from d2lightning.structures.boxes import Boxes, BoxMode, pairwise_iou
from d2lightning.structures.image_list import ImageList
from d2lightning.structures.instances import Instances

__all__ = ["BoxMode", "Boxes", "ImageList", "Instances", "pairwise_iou"]

"""detectron2 ``modeling/postprocessing.py``: :func:`detector_postprocess` (boxes only)."""

from __future__ import annotations

from d2lightning.structures import Instances

__all__ = ["detector_postprocess"]


def detector_postprocess(results: Instances, output_height: int, output_width: int) -> Instances:
    """detectron2 ``detector_postprocess``: rescale detections from the network input size to the output size.

    Boxes (``pred_boxes``, else ``proposal_boxes``) are scaled by ``output / results.image_size``, clipped to
    the output size, and empty boxes are dropped. The boxes of ``results`` are modified in place.

    Raises:
        ValueError: when ``results`` has no boxes.
    """
    scale_x = output_width / results.image_size[1]
    scale_y = output_height / results.image_size[0]
    out = Instances((output_height, output_width), **results.get_fields())
    if out.has("pred_boxes"):
        boxes = out.pred_boxes
    elif out.has("proposal_boxes"):
        boxes = out.proposal_boxes
    else:
        raise ValueError("Predictions must contain boxes (pred_boxes or proposal_boxes)!")
    boxes.scale(scale_x, scale_y)
    boxes.clip(out.image_size)
    return out[boxes.nonempty()]

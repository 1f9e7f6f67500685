"""``ShapesDetector``: the small anchor-free detector of the demo, in detectron2's meta-architecture contract.

``forward(batched_inputs)`` takes detectron2's ``list[dict]`` (``"image"``: ``(C, H, W)`` tensor in
``INPUT.FORMAT``; optional ``"height"``/``"width"``: the size to report boxes in; ``"instances"`` when
training). In training it returns ``{"loss_heatmap", "loss_box"}``; in eval ``[{"instances": Instances(
pred_boxes, scores, pred_classes)}]`` rescaled to each input's ``height``/``width``, like detectron2 models.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from d2lightning.config.configurable import configurable
from d2lightning.config.defaults import SHAPES_DETECTOR_KEYS
from d2lightning.config.lookup import cfg_get
from d2lightning.modeling import centernet
from d2lightning.modeling.backbone import ShapesBackbone
from d2lightning.modeling.meta_arch.build import META_ARCH_REGISTRY
from d2lightning.modeling.postprocessing import detector_postprocess
from d2lightning.structures import Boxes, ImageList, Instances
from d2lightning.utils.events import get_event_storage, has_event_storage

__all__ = ["SHAPES_DETECTOR_DEFAULTS", "ShapesDetector"]

logger = logging.getLogger(__name__)

SHAPES_DETECTOR_DEFAULTS: dict[str, Any] = {"MODEL": {"SHAPES_DETECTOR": SHAPES_DETECTOR_KEYS}}
"""Config keys of this model and their defaults (part of ``get_cfg()``'s defaults: they are declared in
``d2lightning.config.defaults``, so that a config loads without importing the model)."""

_KEY = "MODEL.SHAPES_DETECTOR."
_PRIOR_BIAS = -2.19  # sigmoid(-2.19) = 0.1, CenterNet's heatmap initialisation


def _opt(cfg: Any, name: str) -> Any:
    return cfg_get(cfg, _KEY + name, default=SHAPES_DETECTOR_DEFAULTS["MODEL"]["SHAPES_DETECTOR"][name])


def _head(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_mid, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c_mid, c_out, 1))


@META_ARCH_REGISTRY.register()
class ShapesDetector(nn.Module):
    """A CenterNet/TTFNet-style detector: :class:`ShapesBackbone`, heatmap and box-distance heads at stride 4.

    ``@configurable``: built from a config, ``ShapesDetector(cfg)`` (``MODEL.PIXEL_MEAN`` / ``MODEL.PIXEL_STD``, 3
    values each in ``INPUT.FORMAT`` channel order, ``INPUT.FORMAT`` "BGR"/"RGB", and the keys of
    :data:`SHAPES_DETECTOR_DEFAULTS`; missing keys take those defaults, detectron2's for the first two), or from
    explicit arguments, ``ShapesDetector(num_classes=3, backbone_widths=[16, 32], head_width=32)`` (what a
    LazyConfig's ``LazyCall(ShapesDetector)(...)`` does; the lower-case names of the same keys).

    Raises:
        ValueError: for pixel statistics that are not 3 values, a zero std, or an unknown format.
    """

    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        backbone_widths: Sequence[int],
        head_width: int,
        pixel_mean: Sequence[float] = (103.530, 116.280, 123.675),
        pixel_std: Sequence[float] = (1.0, 1.0, 1.0),
        input_format: str = "BGR",
        gaussian_alpha: float = 0.54,
        heatmap_loss_weight: float = 1.0,
        box_loss_weight: float = 5.0,
        score_thresh_test: float = 0.05,
        detections_per_image: int = 100,
    ) -> None:
        super().__init__()
        mean, std = [float(v) for v in pixel_mean], [float(v) for v in pixel_std]
        if len(mean) != 3 or len(std) != 3 or min(abs(s) for s in std) == 0:
            raise ValueError(f"MODEL.PIXEL_MEAN={mean} and MODEL.PIXEL_STD={std} must be 3 values, std non-zero")
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"INPUT.FORMAT={input_format!r} must be 'BGR' or 'RGB'")
        self.input_format = input_format
        self.register_buffer("pixel_mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(3, 1, 1), persistent=False)
        self.num_classes = int(num_classes)
        self.backbone = ShapesBackbone(list(backbone_widths), int(head_width))
        self.heatmap_head = _head(int(head_width), int(head_width), self.num_classes)
        self.box_head = _head(int(head_width), int(head_width), 4)
        self.heatmap_head[-1].bias.data.fill_(_PRIOR_BIAS)  # type: ignore[operator]
        self.alpha = float(gaussian_alpha)
        self.heatmap_weight = float(heatmap_loss_weight)
        self.box_weight = float(box_loss_weight)
        self.score_thresh = float(score_thresh_test)
        self.topk = int(detections_per_image)

    @classmethod
    def from_config(cls, cfg: Any) -> dict[str, Any]:
        """The constructor's arguments from a config (missing keys take their defaults)."""
        return {
            "pixel_mean": cfg_get(cfg, "MODEL.PIXEL_MEAN", default=[103.530, 116.280, 123.675]),
            "pixel_std": cfg_get(cfg, "MODEL.PIXEL_STD", default=[1.0, 1.0, 1.0]),
            "input_format": cfg_get(cfg, "INPUT.FORMAT", default="BGR"),
            **{name.lower(): _opt(cfg, name) for name in SHAPES_DETECTOR_DEFAULTS["MODEL"]["SHAPES_DETECTOR"]},
        }

    @property
    def device(self) -> torch.device:
        """Device of the model (of its pixel statistics)."""
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: list[dict[str, Any]]) -> ImageList:
        """Normalise ``(x - PIXEL_MEAN) / PIXEL_STD`` and pad into a batch divisible by 16."""
        images = [(x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def _predict(self, images: ImageList) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.backbone(images.tensor)
        ltrb = F.softplus(self.box_head(feat)) * (4 * self.backbone.stride)
        return self.heatmap_head(feat), ltrb.permute(0, 2, 3, 1)

    def forward(self, batched_inputs: list[dict[str, Any]]) -> Any:
        """Losses in training mode; per-image ``{"instances": Instances}`` in eval mode.

        Raises:
            ValueError: in training, when an input has no ``"instances"``.
        """
        images = self.preprocess_image(batched_inputs)
        logits, ltrb = self._predict(images)
        if self.training:
            if any("instances" not in x for x in batched_inputs):
                raise ValueError("ShapesDetector needs 'instances' in every input during training")
            return self.losses(logits, ltrb, [x["instances"].to(self.device) for x in batched_inputs])
        results = []
        for i, x in enumerate(batched_inputs):
            h, w = images.image_sizes[i]
            boxes, scores, classes = centernet.decode(
                logits[i], ltrb[i], self.backbone.stride, self.topk, self.score_thresh
            )
            inst = Instances((h, w), pred_boxes=Boxes(boxes), scores=scores, pred_classes=classes)
            inst.pred_boxes.clip((h, w))
            results.append({"instances": detector_postprocess(inst, x.get("height", h), x.get("width", w))})
        return results

    def losses(self, logits: torch.Tensor, ltrb: torch.Tensor, gt: list[Instances]) -> dict[str, torch.Tensor]:
        """``loss_heatmap`` (focal) and ``loss_box`` (GIoU) of a batch against its ground truth."""
        stride = self.backbone.stride
        targets = [
            centernet.build_targets(
                g.gt_boxes.tensor,
                g.gt_classes,
                self.num_classes,
                (logits.shape[-2], logits.shape[-1]),
                stride,
                self.alpha,
            )
            for g in gt
        ]
        heat = torch.stack([t[0] for t in targets])
        box_t = torch.stack([t[1] for t in targets]).reshape(-1, 4)
        box_w = torch.stack([t[2] for t in targets]).reshape(-1)
        pred = centernet.ltrb_to_boxes(ltrb, stride).reshape(-1, 4)
        fg = box_w > 0
        loss_heatmap = centernet.focal_loss(logits, heat) * self.heatmap_weight
        loss_box = centernet.giou_loss(pred[fg], box_t[fg], box_w[fg]) * self.box_weight
        if has_event_storage():  # as detectron2 models, report to the running trainer's storage
            storage = get_event_storage()
            with torch.no_grad():
                peak_scores = torch.sigmoid(logits)[heat.eq(1)]
            storage.put_scalar("shapes_detector/num_gt_per_image", sum(len(g) for g in gt) / len(gt))
            if len(peak_scores):
                storage.put_scalar("shapes_detector/peak_score", float(peak_scores.mean()))
        return {"loss_heatmap": loss_heatmap, "loss_box": loss_box}

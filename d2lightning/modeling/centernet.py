"""CenterNet/TTFNet-style targets, losses and decoding for the shapes detector.

Each object is a Gaussian peak on its class's heatmap at the output cell holding its centre (Gaussian
widths proportional to the box, as in TTFNet). Every cell near a centre (Gaussian value above
``REG_THRESH``) also regresses the distances from its centre to the four box sides, trained with a
Gaussian-weighted GIoU loss; a cell near several objects regresses the smallest one. At test time the
local maxima of the heatmaps (3x3 max-pool) are the detections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["build_targets", "decode", "focal_loss", "giou_loss", "ltrb_to_boxes"]

REG_THRESH = 0.1


def _cell_centers(h: int, w: int, stride: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride
    return ys[:, None].expand(h, w), xs[None, :].expand(h, w)


def build_targets(
    boxes: torch.Tensor,
    classes: torch.Tensor,
    num_classes: int,
    size: tuple[int, int],
    stride: int,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets of one image on an ``size = (h, w)`` output grid.

    Args:
        boxes: ``(N, 4)`` XYXY ground-truth boxes in input pixels.
        classes: ``(N,)`` class indices.
        num_classes: number of heatmap channels.
        size: output grid ``(h, w)``.
        stride: input pixels per output cell.
        alpha: Gaussian sigma as a fraction of box side / 6.

    Returns:
        ``heatmap (C, h, w)`` with 1 exactly at object centres, ``box_targets (h, w, 4)`` and
        ``box_weights (h, w)`` (0 where no box is regressed).
    """
    h, w = size
    device = boxes.device
    heat = torch.zeros(num_classes, h, w, device=device)
    box_t = torch.zeros(h, w, 4, device=device)
    if len(boxes) == 0:
        return heat, box_t, torch.zeros(h, w, device=device)
    ctr = (boxes[:, :2] + boxes[:, 2:]) / 2 / stride
    ix = ctr[:, 0].floor().clamp(0, w - 1)
    iy = ctr[:, 1].floor().clamp(0, h - 1)
    sig = ((boxes[:, 2:] - boxes[:, :2]) / stride * alpha / 6).clamp(min=0.3)
    gy = torch.arange(h, device=device, dtype=torch.float32)[None, :, None]
    gx = torch.arange(w, device=device, dtype=torch.float32)[None, None, :]
    dx = (gx - ix[:, None, None]) ** 2 / (2 * sig[:, 0, None, None] ** 2)
    dy = (gy - iy[:, None, None]) ** 2 / (2 * sig[:, 1, None, None] ** 2)
    g = torch.exp(-(dx + dy))  # (N, h, w), exactly 1 at each centre cell
    heat.scatter_reduce_(0, classes[:, None, None].expand_as(g), g, "amax")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cand = torch.where(g > REG_THRESH, area[:, None, None], torch.full_like(g, float("inf")))
    best = cand.argmin(dim=0)  # smallest object claiming each cell
    weights = torch.gather(g, 0, best[None])[0]
    weights = torch.where(torch.isfinite(cand.min(dim=0).values), weights, torch.zeros_like(weights))
    return heat, boxes[best], weights


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), summed and divided by the number of peaks."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = torch.log(1 - p) * p**2 * (1 - target) ** 4 * (1 - pos)
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def ltrb_to_boxes(ltrb: torch.Tensor, stride: int) -> torch.Tensor:
    """``(..., h, w, 4)`` distances to the sides -> XYXY boxes around each cell centre."""
    h, w = ltrb.shape[-3:-1]
    cy, cx = _cell_centers(h, w, stride, ltrb.device)
    return torch.stack((cx - ltrb[..., 0], cy - ltrb[..., 1], cx + ltrb[..., 2], cy + ltrb[..., 3]), dim=-1)


def giou_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean of ``1 - GIoU`` between XYXY ``pred`` and ``target`` boxes (0 when all weights are 0)."""
    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_p = (pred[:, 2:] - pred[:, :2]).clamp(min=0).prod(dim=1)
    area_t = (target[:, 2:] - target[:, :2]).prod(dim=1)
    union = area_p + area_t - inter
    hull = (torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])).prod(dim=1)
    giou = inter / union.clamp(min=1e-6) - (hull - union) / hull.clamp(min=1e-6)
    return ((1 - giou) * weight).sum() / weight.sum().clamp(min=1e-6)


def decode(
    logits: torch.Tensor, ltrb: torch.Tensor, stride: int, topk: int, score_thresh: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detections of one image: ``logits (C, h, w)``, ``ltrb (h, w, 4)`` -> ``(boxes, scores, classes)``.

    Keeps heatmap local maxima (3x3), the ``topk`` best, with score above ``score_thresh``.
    """
    heat = torch.sigmoid(logits)
    peaks = heat * (F.max_pool2d(heat[None], 3, stride=1, padding=1)[0] == heat)
    h, w = heat.shape[-2:]
    scores, idx = peaks.flatten().topk(min(topk, peaks.numel()))
    keep = scores > score_thresh
    scores, idx = scores[keep], idx[keep]
    classes, cell = idx // (h * w), idx % (h * w)
    boxes = ltrb_to_boxes(ltrb, stride).reshape(h * w, 4)[cell]
    return boxes, scores, classes

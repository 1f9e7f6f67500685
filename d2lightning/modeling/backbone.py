"""The shapes detector's backbone: a small BatchNorm CNN with a top-down merge to stride 4.

No detectron2 counterpart (detectron2 would use a ResNet + FPN); it follows the same idea at toy scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ShapesBackbone", "conv_bn_relu"]


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (no bias) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ShapesBackbone(nn.Module):
    """Four stages at strides 2, 4, 8, 16, merged top-down into one stride-4 map of ``out_channels``.

    Stage 1 is one strided conv; the others a strided conv plus a conv. Stages 3 and 4 are projected with
    1x1 convs, upsampled (nearest) and added to stage 2's projection, then smoothed by a conv-BN-ReLU.

    Args:
        widths: channels of the four stages.
        out_channels: channels of the output map.

    Raises:
        ValueError: unless ``widths`` holds four positive ints and ``out_channels`` is positive.
    """

    stride = 4
    size_divisibility = 16

    def __init__(self, widths: Sequence[int], out_channels: int) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) != 4 or min(widths) < 1 or out_channels < 1:
            raise ValueError(f"widths={widths} must be 4 positive ints and out_channels={out_channels} positive")
        w1, w2, w3, w4 = widths
        self.stem = conv_bn_relu(3, w1, 2)
        self.stage2 = nn.Sequential(conv_bn_relu(w1, w2, 2), conv_bn_relu(w2, w2))
        self.stage3 = nn.Sequential(conv_bn_relu(w2, w3, 2), conv_bn_relu(w3, w3))
        self.stage4 = nn.Sequential(conv_bn_relu(w3, w4, 2), conv_bn_relu(w4, w4))
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in (w2, w3, w4))
        self.smooth = conv_bn_relu(out_channels, out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` with H, W multiples of 16 -> ``(N, out_channels, H / 4, W / 4)``."""
        c2 = self.stage2(self.stem(x))
        c3 = self.stage3(c2)
        c4 = self.stage4(c3)
        p = self.lateral[2](c4)
        p = self.lateral[1](c3) + F.interpolate(p, size=c3.shape[-2:], mode="nearest")
        p = self.lateral[0](c2) + F.interpolate(p, size=c2.shape[-2:], mode="nearest")
        return self.smooth(p)

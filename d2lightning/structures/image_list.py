"""detectron2 ``structures/image_list.py``: ``ImageList``, images of different sizes padded into a batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["ImageList"]


class ImageList:
    """detectron2 ``ImageList``: a padded ``(N, C, H, W)`` batch plus the true ``(h, w)`` of each image.

    Args:
        tensor: the padded batch.
        image_sizes: ``(h, w)`` of each image before padding.
    """

    def __init__(self, tensor: torch.Tensor, image_sizes: list[tuple[int, int]]) -> None:
        self.tensor = tensor
        self.image_sizes = image_sizes

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __getitem__(self, idx: int) -> torch.Tensor:
        """Image ``idx`` without its padding, shape ``(C, h, w)``."""
        h, w = self.image_sizes[idx]
        return self.tensor[idx, ..., :h, :w]

    def to(self, device: torch.device | str) -> ImageList:
        """This batch on ``device``."""
        return ImageList(self.tensor.to(device), self.image_sizes)

    @property
    def device(self) -> torch.device:
        """Device of the batch tensor."""
        return self.tensor.device

    @staticmethod
    def from_tensors(tensors: Sequence[torch.Tensor], size_divisibility: int = 0, pad_value: float = 0.0) -> ImageList:
        """Pad ``(C, Hi, Wi)`` tensors at the bottom/right to a common size and stack them.

        Mirrors detectron2 ``ImageList.from_tensors``: with ``size_divisibility > 1`` the common height and
        width are rounded up to a multiple of it.

        Raises:
            ValueError: for an empty sequence or tensors whose leading dims differ.
        """
        if len(tensors) == 0:
            raise ValueError("ImageList.from_tensors needs at least one tensor")
        lead = tensors[0].shape[:-2]
        if any(t.shape[:-2] != lead for t in tensors):
            raise ValueError(f"tensors must share their leading dims, got {[tuple(t.shape) for t in tensors]}")
        sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
        max_h, max_w = max(s[0] for s in sizes), max(s[1] for s in sizes)
        if size_divisibility > 1:
            d = size_divisibility
            max_h, max_w = -(-max_h // d) * d, -(-max_w // d) * d
        if len(tensors) == 1:
            h, w = sizes[0]
            batch = F.pad(tensors[0], [0, max_w - w, 0, max_h - h], value=pad_value).unsqueeze(0)
        else:
            batch = tensors[0].new_full((len(tensors), *lead, max_h, max_w), pad_value)
            for i, t in enumerate(tensors):
                batch[i, ..., : t.shape[-2], : t.shape[-1]].copy_(t)
        return ImageList(batch.contiguous(), sizes)

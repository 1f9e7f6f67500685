"""detectron2 ``structures/boxes.py``: :class:`BoxMode` and :class:`Boxes` (axis-aligned, absolute XYXY).

Only the absolute modes (``XYXY_ABS``, ``XYWH_ABS``) are implemented; the relative and rotated modes of
detectron2 keep their enum values so that serialised ``bbox_mode`` integers mean the same thing, but
converting from or to them raises ``NotImplementedError``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from enum import IntEnum, unique
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["BoxMode", "Boxes", "pairwise_iou"]

_RawBox = TypeVar("_RawBox", list, tuple, np.ndarray, torch.Tensor)


@unique
class BoxMode(IntEnum):
    """detectron2 ``BoxMode``: how the numbers of a box are laid out.

    ``XYXY_ABS`` is ``(x0, y0, x1, y1)`` in absolute pixels; ``XYWH_ABS`` is ``(x0, y0, w, h)``. The other
    members exist for compatibility of the integer values only.

    Example::

        >>> BoxMode.convert([10, 20, 5, 5], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
        [10.0, 20.0, 15.0, 25.0]
    """

    XYXY_ABS = 0
    XYWH_ABS = 1
    XYXY_REL = 2
    XYWH_REL = 3
    XYWHA_ABS = 4

    @staticmethod
    def convert(box: _RawBox, from_mode: BoxMode | int, to_mode: BoxMode | int) -> _RawBox:
        """Convert boxes between modes, returning the same container type as given.

        Mirrors detectron2 ``BoxMode.convert`` for the absolute axis-aligned modes. The input is never
        modified. A list/tuple is one box of 4 numbers (returned as floats); an array or tensor is Nx4.

        Args:
            box: a 4-element list/tuple, or an Nx4 ``np.ndarray`` / ``torch.Tensor``.
            from_mode: the mode ``box`` is in.
            to_mode: the mode to convert to.

        Raises:
            TypeError: when ``box`` is not one of the accepted containers.
            ValueError: when ``box`` does not hold 4 numbers per box.
            NotImplementedError: for relative or rotated modes.
        """
        from_mode, to_mode = BoxMode(from_mode), BoxMode(to_mode)
        if from_mode == to_mode:
            return box
        supported = (BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
        if from_mode not in supported or to_mode not in supported:
            raise NotImplementedError(
                f"Conversion from {from_mode.name} to {to_mode.name} is not supported; "
                "only XYXY_ABS <-> XYWH_ABS is implemented"
            )
        if isinstance(box, (list, tuple)):
            if len(box) != 4:
                raise ValueError(f"box={box!r} must hold 4 numbers")
            arr = torch.tensor([list(box)], dtype=torch.float64)
        elif isinstance(box, np.ndarray):
            arr = torch.from_numpy(box).clone()
        elif isinstance(box, torch.Tensor):
            arr = box.clone()
        else:
            raise TypeError(f"box must be a list, tuple, np.ndarray or torch.Tensor, got {type(box)!r}")
        if arr.dim() != 2 or arr.shape[-1] != 4:
            raise ValueError(f"box must be Nx4, got shape {tuple(arr.shape)}")
        if from_mode == BoxMode.XYWH_ABS:
            arr[:, 2:] += arr[:, :2]
        else:
            arr[:, 2:] -= arr[:, :2]
        out: Any = arr
        if isinstance(box, (list, tuple)):
            values = [float(v) for v in arr[0].tolist()]
            out = values if isinstance(box, list) else tuple(values)
        elif isinstance(box, np.ndarray):
            out = arr.numpy()
        return out


class Boxes:
    """detectron2 ``Boxes``: N axis-aligned boxes as an Nx4 float32 tensor of ``(x0, y0, x1, y1)``.

    Behaves like a tensor for indexing, ``len``, iteration and ``to(device)``.

    Args:
        tensor: an Nx4 tensor, array or nested list; converted to float32. An empty input becomes 0x4.

    Raises:
        ValueError: when the data is not Nx4.

    Example::

        >>> b = Boxes([[0, 0, 10, 20], [5, 5, 6, 5]])
        >>> b.area().tolist(), b.nonempty().tolist()
        ([200.0, 0.0], [True, False])
    """

    def __init__(self, tensor: torch.Tensor | np.ndarray | Sequence[Sequence[float]]) -> None:
        if isinstance(tensor, torch.Tensor):
            t = tensor.to(torch.float32)
        else:
            t = torch.as_tensor(np.asarray(tensor, dtype=np.float32), dtype=torch.float32)
        if t.numel() == 0:
            t = t.reshape(0, 4)
        if t.dim() != 2 or t.shape[-1] != 4:
            raise ValueError(f"Boxes(tensor=) must be Nx4, got shape {tuple(t.shape)}")
        self.tensor = t

    def clone(self) -> Boxes:
        """A copy that shares no storage with this object."""
        return Boxes(self.tensor.clone())

    def to(self, device: torch.device | str) -> Boxes:
        """These boxes on ``device`` (dtype stays float32, as in detectron2)."""
        return Boxes(self.tensor.to(device=device))

    @property
    def device(self) -> torch.device:
        """Device of the underlying tensor."""
        return self.tensor.device

    def area(self) -> torch.Tensor:
        """Area ``(x1 - x0) * (y1 - y0)`` of every box, shape (N,)."""
        t = self.tensor
        return (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])

    def clip(self, box_size: tuple[int, int]) -> None:
        """Clamp in place x to ``[0, width]`` and y to ``[0, height]``.

        Args:
            box_size: ``(height, width)``.

        Raises:
            ValueError: when the boxes hold NaN or infinite values.
        """
        if not torch.isfinite(self.tensor).all():
            raise ValueError("Box tensor contains infinite or NaN!")
        h, w = box_size
        x = self.tensor[:, 0::2].clamp(min=0, max=w)
        y = self.tensor[:, 1::2].clamp(min=0, max=h)
        self.tensor = torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), dim=-1)

    def nonempty(self, threshold: float = 0.0) -> torch.Tensor:
        """Boolean mask of boxes whose width and height are both larger than ``threshold``."""
        t = self.tensor
        return ((t[:, 2] - t[:, 0]) > threshold) & ((t[:, 3] - t[:, 1]) > threshold)

    def scale(self, scale_x: float, scale_y: float) -> None:
        """Multiply x coordinates by ``scale_x`` and y coordinates by ``scale_y``, in place."""
        self.tensor[:, 0::2] *= scale_x
        self.tensor[:, 1::2] *= scale_y

    def get_centers(self) -> torch.Tensor:
        """Box centres ``(x, y)``, shape (N, 2)."""
        return (self.tensor[:, :2] + self.tensor[:, 2:]) / 2

    def __getitem__(self, item: int | slice | torch.Tensor | Sequence[int]) -> Boxes:
        """A new :class:`Boxes` from an int (one box), a slice, a bool mask or an index tensor."""
        if isinstance(item, int):
            return Boxes(self.tensor[item].view(1, -1))
        b = self.tensor[item]
        if b.dim() != 2:
            raise IndexError(f"Indexing Boxes with {item!r} did not return an Nx4 matrix")
        return Boxes(b)

    def __len__(self) -> int:
        return int(self.tensor.shape[0])

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Yield each box as a tensor of shape (4,)."""
        yield from self.tensor

    def __repr__(self) -> str:
        return f"Boxes({self.tensor})"

    @classmethod
    def cat(cls, boxes_list: Sequence[Boxes]) -> Boxes:
        """Concatenate a list of :class:`Boxes` into a new one (no storage shared with the inputs).

        Raises:
            TypeError: when ``boxes_list`` is not a list/tuple of :class:`Boxes`.
        """
        if not isinstance(boxes_list, (list, tuple)) or not all(isinstance(b, Boxes) for b in boxes_list):
            raise TypeError(f"Boxes.cat expects a list or tuple of Boxes, got {boxes_list!r}")
        if len(boxes_list) == 0:
            return cls(torch.empty(0, 4))
        return cls(torch.cat([b.tensor for b in boxes_list], dim=0))


def pairwise_iou(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """detectron2 ``pairwise_iou``: the NxM matrix of IoU between two sets of XYXY boxes (0 when disjoint)."""
    a, b = boxes1.tensor, boxes2.tensor
    wh = (torch.min(a[:, None, 2:], b[:, 2:]) - torch.max(a[:, None, :2], b[:, :2])).clamp(min=0)
    inter = wh.prod(dim=2)
    union = boxes1.area()[:, None] + boxes2.area()[None, :] - inter
    return torch.where(inter > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))

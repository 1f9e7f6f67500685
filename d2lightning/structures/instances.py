"""detectron2 ``structures/instances.py``: :class:`Instances`, the per-image list of detections or labels.

Fields are any objects with ``len()`` (tensors, :class:`~d2lightning.structures.Boxes`, lists) that all have
the same length. Indexing applies to every field at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["Instances"]


class Instances:
    """detectron2 ``Instances``: named per-instance fields of one image, all of the same length.

    Args:
        image_size: ``(height, width)`` of the image the instances belong to.
        **kwargs: initial fields.

    Raises:
        ValueError: when a field's length differs from the existing ones.

    Example::

        >>> inst = Instances((32, 48), scores=torch.tensor([0.9, 0.2]))
        >>> inst.pred_classes = torch.tensor([1, 0])
        >>> len(inst[inst.scores > 0.5])
        1
    """

    def __init__(self, image_size: tuple[int, int], **kwargs: Any) -> None:
        self._image_size = image_size
        self._fields: dict[str, Any] = {}
        for k, v in kwargs.items():
            self.set(k, v)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return self._image_size

    def __setattr__(self, name: str, val: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, val)
        else:
            self.set(name, val)

    def __getattr__(self, name: str) -> Any:
        if name == "_fields" or name not in self._fields:
            raise AttributeError(f"Cannot find field '{name}' in the given Instances!")
        return self._fields[name]

    def set(self, name: str, value: Any) -> None:
        """Set field ``name``; its length must match the other fields'.

        Raises:
            ValueError: on a length mismatch.
        """
        n = len(value)
        if self._fields and len(self) != n:
            raise ValueError(f"Adding a field '{name}' of length {n} to an Instances of length {len(self)}")
        self._fields[name] = value

    def has(self, name: str) -> bool:
        """Whether field ``name`` exists."""
        return name in self._fields

    def remove(self, name: str) -> None:
        """Delete field ``name`` (``KeyError`` if absent)."""
        del self._fields[name]

    def get(self, name: str) -> Any:
        """The field ``name`` (``KeyError`` if absent)."""
        return self._fields[name]

    def get_fields(self) -> dict[str, Any]:
        """The name -> value dict itself; modifying it modifies this object."""
        return self._fields

    def to(self, *args: Any, **kwargs: Any) -> Instances:
        """A new Instances whose fields with a ``to`` method were moved with ``to(*args, **kwargs)``."""
        ret = Instances(self._image_size)
        for k, v in self._fields.items():
            ret.set(k, v.to(*args, **kwargs) if hasattr(v, "to") else v)
        return ret

    def __getitem__(self, item: int | slice | torch.Tensor | Sequence[int]) -> Instances:
        """Index every field: an int (kept as a length-1 Instances), a slice, a bool mask or indices.

        Raises:
            IndexError: for an int out of range.
        """
        if type(item) is int:
            n = len(self)
            if item >= n or item < -n:
                raise IndexError(f"Instances index {item} out of range for length {n}")
            item = slice(item, None, n)
        ret = Instances(self._image_size)
        for k, v in self._fields.items():
            ret.set(k, v[item])
        return ret

    def __len__(self) -> int:
        for v in self._fields.values():
            return len(v)
        raise NotImplementedError("Empty Instances does not support __len__!")

    def __iter__(self) -> Any:
        raise NotImplementedError("`Instances` object is not iterable!")

    def __contains__(self, name: str) -> bool:
        return name in self._fields

    @staticmethod
    def cat(instance_lists: Sequence[Instances]) -> Instances:
        """Concatenate Instances of the same image size field by field.

        Tensors use ``torch.cat``, lists are chained, other types use their ``cat`` class method.

        Raises:
            TypeError: when an element is not an Instances or a field type cannot be concatenated.
            ValueError: for an empty list or differing image sizes.
        """
        if not all(isinstance(i, Instances) for i in instance_lists):
            raise TypeError(f"Instances.cat expects a list of Instances, got {instance_lists!r}")
        if len(instance_lists) == 0:
            raise ValueError("Instances.cat needs at least one Instances")
        if len(instance_lists) == 1:
            return instance_lists[0]
        image_size = instance_lists[0].image_size
        for i in instance_lists[1:]:
            if i.image_size != image_size:
                raise ValueError(f"Instances.cat: image sizes differ ({i.image_size} vs {image_size})")
        ret = Instances(image_size)
        for k, v0 in instance_lists[0]._fields.items():
            values = [i.get(k) for i in instance_lists]
            if isinstance(v0, torch.Tensor):
                ret.set(k, torch.cat(values, dim=0))
            elif isinstance(v0, list):
                ret.set(k, list(itertools.chain(*values)))
            elif hasattr(type(v0), "cat"):
                ret.set(k, type(v0).cat(values))
            else:
                raise TypeError(f"Unsupported type {type(v0)} for concatenation")
        return ret

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}: {v}" for k, v in self._fields.items())
        n = len(self) if self._fields else 0
        h, w = self._image_size
        return f"Instances(num_instances={n}, image_height={h}, image_width={w}, fields=[{fields}])"

    __str__ = __repr__

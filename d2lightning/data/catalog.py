"""detectron2 ``data/catalog.py``: the global :data:`DatasetCatalog` and :data:`MetadataCatalog`.

``DatasetCatalog`` maps a name to a zero-argument function returning the dataset as ``list[dict]``;
``MetadataCatalog`` maps a name to a :class:`Metadata` object created on first access.
"""

from __future__ import annotations

import copy
import types
from collections import UserDict
from collections.abc import Callable
from typing import Any

__all__ = ["DatasetCatalog", "Metadata", "MetadataCatalog"]


class _DatasetCatalog(UserDict):
    """detectron2 ``DatasetCatalog``: dataset name -> function returning ``list[dict]`` (detectron2 format).

    Example::

        >>> DatasetCatalog.register("tiny", lambda: [{"file_name": "a.png", "image_id": 0}])
        >>> len(DatasetCatalog.get("tiny"))
        1
    """

    def register(self, name: str, func: Callable[[], list[dict]]) -> None:
        """Register ``func`` under ``name``; it must return the same list every time it is called.

        Raises:
            TypeError: when ``func`` is not callable.
            ValueError: when ``name`` is already registered.
        """
        if not callable(func):
            raise TypeError(f"DatasetCatalog.register(func=) must be callable, got {func!r}")
        if name in self:
            raise ValueError(f"Dataset '{name}' is already registered!")
        self[name] = func

    def get(self, name: str) -> list[dict]:  # type: ignore[override]
        """Call the function registered as ``name`` and return its result.

        Raises:
            KeyError: when ``name`` is not registered; the message lists the registered names.
        """
        try:
            func = self[name]
        except KeyError as e:
            raise KeyError(
                f"Dataset '{name}' is not registered! Available datasets are: {', '.join(self.keys())}"
            ) from e
        return func()

    def list(self) -> list[str]:
        """Names of all registered datasets."""
        return list(self.keys())

    def remove(self, name: str) -> None:
        """Unregister ``name`` (alias of ``pop``)."""
        self.pop(name)

    def __repr__(self) -> str:
        return f"DatasetCatalog(registered datasets: {', '.join(self.keys())})"

    __str__ = __repr__


DatasetCatalog = _DatasetCatalog()


class Metadata(types.SimpleNamespace):
    """detectron2 ``Metadata``: attributes describing a dataset (``thing_classes``, ``evaluator_type``...).

    An attribute, once set, cannot be changed to a different value (as in detectron2).

    Example::

        >>> m = Metadata(name="demo").set(thing_classes=["cat"])
        >>> m.thing_classes, m.get("missing", 0)
        (['cat'], 0)
    """

    name: str = "N/A"

    def __getattr__(self, key: str) -> Any:
        keys = [k for k in self.__dict__ if k != "name"]
        raise AttributeError(
            f"Attribute '{key}' does not exist in the metadata of dataset '{self.name}'. Available keys are {keys}."
        )

    def __setattr__(self, key: str, val: Any) -> None:
        if key in self.__dict__ and self.__dict__[key] != val:
            raise ValueError(
                f"Attribute '{key}' in the metadata of '{self.name}' cannot be set to a different value!\n"
                f"{self.__dict__[key]} != {val}"
            )
        super().__setattr__(key, val)

    def as_dict(self) -> dict[str, Any]:
        """A shallow copy of all attributes."""
        return copy.copy(self.__dict__)

    def set(self, **kwargs: Any) -> Metadata:
        """Set several attributes; returns ``self``."""
        for k, v in kwargs.items():
            setattr(self, k, v)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        """Attribute ``key`` if it exists, else ``default``."""
        return self.__dict__.get(key, default)


class _MetadataCatalog(UserDict):
    """detectron2 ``MetadataCatalog``: dataset name -> :class:`Metadata`, created empty on first ``get``."""

    def get(self, name: str) -> Metadata:  # type: ignore[override]
        """The (singleton) metadata of ``name``, created if needed.

        Raises:
            ValueError: when ``name`` is empty.
        """
        if not name:
            raise ValueError("MetadataCatalog.get(name=) needs a non-empty dataset name")
        if name not in self:
            self[name] = Metadata(name=name)
        return self[name]

    def list(self) -> list[str]:
        """Names that have metadata."""
        return list(self.keys())

    def remove(self, name: str) -> None:
        """Forget the metadata of ``name`` (alias of ``pop``)."""
        self.pop(name)

    def __repr__(self) -> str:
        return f"MetadataCatalog(registered metadata: {', '.join(self.keys())})"

    __str__ = __repr__


MetadataCatalog = _MetadataCatalog()

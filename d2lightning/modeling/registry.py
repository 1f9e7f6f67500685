"""fvcore/detectron2 ``Registry``: a name -> object table filled by a decorator or a call."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry:
    """fvcore ``Registry`` (used by detectron2 ``utils.registry``): look objects up by name.

    Args:
        name: what the registry holds, used in messages (e.g. ``"META_ARCH"``).

    Example::

        >>> BACKBONES = Registry("BACKBONE")
        >>> @BACKBONES.register()
        ... class Tiny: ...
        >>> BACKBONES.get("Tiny") is Tiny
        True
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._obj_map: dict[str, Any] = {}

    def _do_register(self, name: str, obj: Any) -> None:
        if name in self._obj_map:
            raise ValueError(f"An object named '{name}' was already registered in '{self._name}' registry!")
        self._obj_map[name] = obj

    def register(self, obj: T | None = None) -> Any:
        """Register ``obj`` under its ``__name__``; with no argument, return a decorator that does so.

        Raises:
            ValueError: when the name is already registered.
        """
        if obj is None:

            def deco(func_or_class: T) -> T:
                self._do_register(func_or_class.__name__, func_or_class)  # type: ignore[attr-defined]
                return func_or_class

            return deco
        self._do_register(obj.__name__, obj)  # type: ignore[attr-defined]
        return obj

    def get(self, name: str) -> Any:
        """The object registered as ``name``.

        Raises:
            KeyError: when ``name`` is unknown; the message lists the registered names.
        """
        if name not in self._obj_map:
            raise KeyError(
                f"No object named '{name}' found in '{self._name}' registry! Registered names: {sorted(self._obj_map)}"
            )
        return self._obj_map[name]

    def __contains__(self, name: str) -> bool:
        return name in self._obj_map

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self._obj_map.items())

    def __repr__(self) -> str:
        return f"Registry(name={self._name!r}, names={sorted(self._obj_map)})"

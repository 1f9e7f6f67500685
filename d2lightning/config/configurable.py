"""detectron2's ``config.configurable``: one constructor (or function) callable with explicit arguments or a cfg.

Decorate a class's ``__init__`` (the class then needs a ``from_config(cls, cfg, ...)`` classmethod), or any
function with ``@configurable(from_config=...)``. A call whose first argument (or ``cfg=`` keyword) is a config
— a d2lightning ``CfgNode``, an omegaconf ``DictConfig``, or detectron2's/fvcore's/yacs' ``CfgNode`` — goes through
``from_config``, which turns it into the keyword arguments; any other call is an ordinary call. Keyword arguments
``from_config`` does not take are passed straight on, overriding what it returned, as in detectron2.

Example::

    class Head:
        @configurable
        def __init__(self, num_classes: int, dropout: float = 0.0) -> None: ...

        @classmethod
        def from_config(cls, cfg):
            return {"num_classes": cfg.MODEL.NUM_CLASSES}

    Head(num_classes=3)              # explicit
    Head(cfg, dropout=0.1)           # from a config, with an extra argument
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["configurable"]

F = TypeVar("F", bound=Callable[..., Any])
_MISUSE = (
    "Incorrect use of @configurable: decorate __init__ (with a from_config classmethod), or use "
    "@configurable(from_config=function) on a function."
)


class _NoFromConfigError(TypeError, AttributeError):
    """A ``@configurable`` class without ``from_config``: a ``TypeError``, and the ``AttributeError`` of detectron2."""


def configurable(init_func: F | None = None, *, from_config: Callable[..., Any] | None = None) -> Any:
    """Make ``__init__`` (or a function, given ``from_config``) accept a config in place of its arguments.

    Args:
        init_func: a class's ``__init__`` (used as ``@configurable``).
        from_config: for a function: turns ``(cfg, ...)`` into the function's keyword arguments.

    Raises:
        TypeError: the decorator is misused; at call time, the class lacks a ``from_config`` classmethod (then also
            an ``AttributeError``, as detectron2 raises), or ``from_config``'s first parameter is not named ``cfg``.
    """
    if init_func is not None:
        if not (inspect.isfunction(init_func) and from_config is None and init_func.__name__ == "__init__"):
            raise TypeError(_MISUSE)

        @functools.wraps(init_func)
        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            factory = getattr(type(self), "from_config", None)
            if factory is None or not inspect.ismethod(factory):
                error = _NoFromConfigError if factory is None else TypeError
                raise error(f"{type(self).__name__} uses @configurable and must have a 'from_config' classmethod")
            if called_with_cfg(*args, **kwargs):
                init_func(self, **_arguments_from_config(factory, *args, **kwargs))
            else:
                init_func(self, *args, **kwargs)

        return init
    if from_config is None:
        return configurable  # @configurable() is @configurable
    if not inspect.isfunction(from_config):
        raise TypeError(f"from_config of @configurable must be a function, got {from_config!r}")
    make_args = from_config

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def call(*args: Any, **kwargs: Any) -> Any:
            if called_with_cfg(*args, **kwargs):
                return func(**_arguments_from_config(make_args, *args, **kwargs))
            return func(*args, **kwargs)

        call.from_config = make_args  # type: ignore[attr-defined]
        return call  # type: ignore[return-value]

    return decorate


def is_config(obj: Any) -> bool:
    """Whether ``obj`` is a config ``from_config`` takes: our ``CfgNode``, a ``DictConfig``, or a yacs-family
    ``CfgNode`` (detectron2's, fvcore's, yacs'), recognised by class without importing them."""
    from omegaconf import DictConfig

    from d2lightning.config.config import CfgNode

    if isinstance(obj, (CfgNode, DictConfig)):
        return True
    return any(c.__name__ == "CfgNode" and c.__module__.split(".")[0] in _YACS_FAMILY for c in type(obj).__mro__)


_YACS_FAMILY = ("yacs", "fvcore", "detectron2")


def called_with_cfg(*args: Any, **kwargs: Any) -> bool:
    """Whether a call passes a config first (positionally or as ``cfg=``), so ``from_config`` must handle it."""
    return bool(args and is_config(args[0])) or is_config(kwargs.get("cfg"))


def _arguments_from_config(factory: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    params = inspect.signature(factory).parameters
    if not params or next(iter(params)) != "cfg":
        name = factory.__name__ if inspect.isfunction(factory) else f"{factory.__self__}.from_config"  # type: ignore[attr-defined]
        raise TypeError(f"{name} must take 'cfg' as its first argument")
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values()):
        return dict(factory(*args, **kwargs))
    extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in params}
    result = dict(factory(*args, **kwargs))
    result.update(extra)
    return result

"""Domain checks for built-in config keys whose accepted values are a fixed set.

Each validator takes a type-checked value (possibly None) and returns the value to store, or raises
``ValueError`` saying what is accepted; the config wraps it in a ``ConfigTypeError`` naming the key and
where the value came from. Only keys whose domain cannot grow are checked here: d2lightning's own keys
(``LIGHTNING.*``, ``SOLVER.OPTIMIZER``, ``SOLVER.CHECKPOINT_MAX_TO_KEEP``) and detectron2 keys that feed a
fixed enum (``CLIP_TYPE``, ``WARMUP_METHOD``, ``FLOAT32_PRECISION``). Keys that detectron2 projects extend
with their own values (``LR_SCHEDULER_NAME``, ``INPUT.*``) are left open.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

# Lightning 2.6's `_PRECISION_INPUT` (lightning.fabric.plugins.precision.precision); a test keeps it in sync.
LIGHTNING_PRECISIONS: tuple[str | int, ...] = (
    "transformer-engine",
    "transformer-engine-float16",
    "16-true",
    "16-mixed",
    "bf16-true",
    "bf16-mixed",
    "32-true",
    "64-true",
    "64",
    "32",
    "16",
    "bf16",
    64,
    32,
    16,
)
OPTIMIZERS = ("SGD", "ADAMW")
_DEVICES_STR = re.compile(r"\s*-1\s*|\s*\d+\s*(,\s*\d+\s*)*,?\s*")


def _not_none(value: Any, accepted: str) -> None:
    if value is None:
        raise ValueError(f"None is not accepted; expected {accepted}")


def one_of(*choices: Any) -> Callable[[Any], Any]:
    """A validator accepting exactly ``choices`` (int and str kept distinct)."""

    def check(value: Any) -> Any:
        if not any(value == c and type(value) is type(c) for c in choices):
            raise ValueError(f"expected one of {list(choices)}, got {value!r}")
        return value

    return check


def int_at_least(minimum: int) -> Callable[[Any], Any]:
    """A validator accepting ints ``>= minimum``."""

    def check(value: Any) -> Any:
        _not_none(value, f"an int >= {minimum}")
        if value < minimum:
            raise ValueError(f"expected an int >= {minimum}, got {value!r}")
        return value

    return check


def check_optimizer(value: Any) -> Any:
    """``SOLVER.OPTIMIZER``: "SGD" or "ADAMW", any case; stored upper-case."""
    _not_none(value, f"one of {list(OPTIMIZERS)}")
    if value.upper() not in OPTIMIZERS:
        raise ValueError(f"expected one of {list(OPTIMIZERS)} (any case), got {value!r}")
    return value.upper()


def check_precision(value: Any) -> Any:
    """``LIGHTNING.PRECISION``: a value ``lightning.Trainer(precision=...)`` accepts."""
    return one_of(*LIGHTNING_PRECISIONS)(value)


def check_accelerator(value: Any) -> Any:
    """``LIGHTNING.ACCELERATOR``: "auto", "gpu" or a name in Lightning's ``AcceleratorRegistry``."""
    if value in ("auto", "gpu"):
        return value  # without importing lightning
    from lightning.pytorch.accelerators import AcceleratorRegistry

    names = ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())]
    _not_none(value, f"one of {names}")
    if value not in names:
        raise ValueError(f"expected one of {names}, got {value!r}")
    return value


def check_strategy(value: Any) -> Any:
    """``LIGHTNING.STRATEGY``: "auto" or a name in Lightning's ``StrategyRegistry`` ("ddp", "fsdp", ...)."""
    if value == "auto":
        return value  # without importing lightning
    from lightning.pytorch.strategies import StrategyRegistry

    names = ["auto", *StrategyRegistry.available_strategies()]
    _not_none(value, "'auto' or a registered Lightning strategy name")
    if value.lower() not in names:
        raise ValueError(f"expected 'auto' or a registered Lightning strategy name ({', '.join(names)}), got {value!r}")
    return value


def check_devices(value: Any) -> Any:
    """``LIGHTNING.DEVICES``: "auto", an int >= -1, a non-empty list of device indices, or "0,1" / "-1"."""
    accepted = "'auto', an int >= -1 (-1: all), a non-empty list of device indices, or a string like '0,1'"
    _not_none(value, accepted)
    ok = (
        (isinstance(value, str) and (value == "auto" or _DEVICES_STR.fullmatch(value) is not None))
        or (isinstance(value, int) and value >= -1)
        or (
            isinstance(value, list)
            and len(value) > 0
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)
        )
    )
    if not ok:
        raise ValueError(f"expected {accepted}, got {value!r}")
    return value


def check_deterministic(value: Any) -> Any:
    """``LIGHTNING.DETERMINISTIC``: True, False or "warn" (as ``lightning.Trainer(deterministic=...)``)."""
    _not_none(value, "True, False or 'warn'")
    if isinstance(value, str) and value != "warn":
        raise ValueError(f"expected True, False or 'warn', got {value!r}")
    return value


def check_unit_interval(value: Any) -> Any:
    """A float in [0, 1] (``LIGHTNING.EMA.DECAY``)."""
    _not_none(value, "a float in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"expected a float in [0, 1], got {value!r}")
    return value


def check_class_entries(value: Any) -> Any:
    """``LIGHTNING.LOGGERS`` / ``CALLBACKS``: "pkg.Class" strings or {class_path, init_args} mappings."""
    accepted = "a list of 'package.ClassName' strings or {class_path: str, init_args: mapping} entries"
    _not_none(value, accepted)
    for i, entry in enumerate(value):
        where = f"entry [{i}]"
        if isinstance(entry, str):
            path = entry
        elif isinstance(entry, Mapping):
            extra = set(entry) - {"class_path", "init_args"}
            if extra or "class_path" not in entry:
                raise ValueError(
                    f"{where} must have a 'class_path' and optionally 'init_args', got keys {sorted(entry)}"
                )
            path = entry["class_path"]
            init_args = entry.get("init_args", {})
            if not isinstance(init_args, Mapping):
                raise ValueError(f"{where}: init_args must be a mapping, got {init_args!r}")
        else:
            raise ValueError(f"{where}: expected {accepted}, got {entry!r}")
        if not isinstance(path, str) or "." not in path.strip(".") or " " in path:
            raise ValueError(f"{where}: class path must look like 'package.ClassName', got {path!r}")
    return value


def check_names(value: Any) -> Any:
    """A list of non-empty strings (``LIGHTNING.FSDP.UNITS``: module names or class names)."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) and x for x in value):
        raise ValueError(f"expected a list of module or class names (strings), got {value!r}")
    return value

"""What a config key accepts: :class:`KeySpec`, value decoding and type coercion (yacs rules, made clearer).

Mirrors yacs ``CfgNode._decode_cfg_value`` and ``_check_and_coerce_cfg_value_type``:

- A string value (from the command line, or a YAML string such as ``STEPS: (210000, 250000)``) is read with
  ``ast.literal_eval``: ``"0.01"`` -> 0.01, ``"(12, 18)"`` -> (12, 18), ``"True"`` -> True; a string that
  is not a Python literal (``cpu``, ``a/b.pth``) stays a string.
- The key's type is the type of its default value. A list and a tuple are interchangeable and converted
  to the default's kind. ``None`` is accepted for every key, and a key whose default is None accepts any
  value (both as in yacs).

Differences from yacs, all towards accepting what is obviously meant:

- An int is accepted where a float is expected, and converted (yacs raises for ``BASE_LR: 1``).
- If decoding a string gives a type the key does not take but the raw string would do, the raw string is
  kept: ``OUTPUT_DIR 123`` gives ``"123"`` (yacs raises).
- A string in YAML flow syntax that is no Python literal is read as YAML:
  ``LIGHTNING.CALLBACKS "[{class_path: pkg.Cls, init_args: {a: 1}}]"`` works on the command line as in a file.
- A :class:`KeySpec` may declare several types (``LIGHTNING.DEVICES``: str, int or list) and a validator.
"""

from __future__ import annotations

import ast
import contextlib
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

__all__ = ["KeySpec", "coerce_value", "decode_candidates", "describe_types", "is_valid_leaf"]

_SCALARS = (str, int, float, bool, type(None))
_YAML_WORDS = {"true": True, "false": False, "null": None, "~": None}


@dataclass(frozen=True)
class KeySpec:
    """The declaration of one leaf key: its default, accepted types and an optional validator.

    A plain value in a defaults mapping is shorthand for ``KeySpec(value)``.

    Args:
        default: the default value (a str, int, float, bool, None, or a list/tuple of those).
        types: the accepted types. None derives them from ``default`` (bool -> (bool,), int -> (int,),
            float -> (float,), str -> (str,), list -> (list,), tuple -> (tuple,), None -> anything).
        validator: called with the type-checked value; returns the value to store (it may normalise it)
            or raises ``ValueError``/``TypeError`` with a message saying what is accepted.

    Example::

        KeySpec("auto", types=(str, int, list), validator=check_devices)
    """

    default: Any
    types: tuple[type, ...] | None = None
    validator: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        if not is_valid_leaf(self.default):
            raise TypeError(
                f"KeySpec default must be a str, int, float, bool, None or a list/tuple of those; "
                f"got {type(self.default).__name__} {self.default!r}"
            )
        if self.types is not None and (
            not isinstance(self.types, tuple) or not all(isinstance(t, type) for t in self.types)
        ):
            raise TypeError(f"KeySpec types must be a tuple of types or None, got {self.types!r}")
        if self.validator is not None and not callable(self.validator):
            raise TypeError(f"KeySpec validator must be callable or None, got {self.validator!r}")

    def accepted_types(self) -> tuple[type, ...] | None:
        """The accepted types (None: any valid config value)."""
        return self.types if self.types is not None else types_of(self.default)


def types_of(value: Any) -> tuple[type, ...] | None:
    """The types a key accepts when its reference value is ``value`` (None: anything)."""
    if value is None:
        return None
    return (type(value),) if isinstance(value, (*_SCALARS, list, tuple)) else None


def is_valid_leaf(value: Any) -> bool:
    """Whether ``value`` can be stored as a leaf: a scalar, or a list/tuple of leaves or str-keyed dicts."""
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_valid_leaf(v) or _is_plain_mapping(v) for v in value)
    return False


def _is_plain_mapping(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and (is_valid_leaf(v) or _is_plain_mapping(v)) for k, v in value.items()
    )


def to_plain(value: Any) -> Any:
    """Deep-copy a leaf value into plain Python containers (dicts inside lists become ``dict``)."""
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(to_plain(v) for v in value)
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    return value


def coerce_value(value: Any, types: tuple[type, ...] | None) -> tuple[bool, Any]:
    """Check ``value`` against ``types`` and convert it; returns ``(accepted, converted_value)``.

    None is always accepted. bool is never taken for int/float. An integral number is accepted for float
    and converted; a list/tuple is converted to the accepted sequence kind.
    """
    if value is None:
        return True, None
    if types is None:
        return (True, to_plain(value)) if is_valid_leaf(value) else (False, value)
    if isinstance(value, bool):
        return (True, value) if bool in types else (False, value)
    if isinstance(value, str):
        return (True, value) if str in types else (False, value)
    if int in types and isinstance(value, numbers.Integral):
        return True, int(value)
    if float in types and isinstance(value, numbers.Real):
        return True, float(value)
    if isinstance(value, (list, tuple)) and is_valid_leaf(value):
        if type(value) in types:
            return True, to_plain(value)
        for kind in (list, tuple):
            if kind in types:
                return True, kind(to_plain(v) for v in value)
    return False, value


def decode_candidates(raw: Any, *, yaml_words: bool = False) -> list[Any]:
    """The interpretations of ``raw`` to try in order: its literal_eval value (for a string), its YAML value when
    it is a flow collection (``[...]`` / ``{...}``), then itself.

    With ``yaml_words`` (``a.b=c`` overrides, as LazyConfig/Hydra read them), ``true``/``false``/``null``
    (any case) are also understood.
    """
    if not isinstance(raw, str):
        return [raw]
    candidates: list[Any] = []
    with contextlib.suppress(ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        candidates.append(ast.literal_eval(raw))
    if not candidates and raw.lstrip().startswith(("[", "{")):
        with contextlib.suppress(yaml.YAMLError):
            candidates.append(yaml.safe_load(raw))
    if yaml_words and raw.strip().lower() in _YAML_WORDS:
        candidates.append(_YAML_WORDS[raw.strip().lower()])
    candidates.append(raw)
    return candidates


def describe_types(types: tuple[type, ...] | None) -> str:
    """Human-readable accepted types: ``"float"``, ``"str, int or list"``, ``"any value"``."""
    if types is None:
        return "any value"
    names = ["None" if t is type(None) else t.__name__ for t in types]
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " or " + names[-1]


def describe_value(value: Any) -> str:
    """``"str 'abc'"``, ``"list [1, 2]"``, ``"a mapping {...}"`` for error messages."""
    if isinstance(value, Mapping):
        return f"a mapping {dict(value)!r}"
    return f"{type(value).__name__} {value!r}"

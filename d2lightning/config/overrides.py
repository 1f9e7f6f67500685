"""Command-line overrides in both of detectron2's forms: yacs ``KEY VALUE`` pairs and LazyConfig ``a.b=c``.

detectron2's ``default_argument_parser`` collects trailing ``opts``; ``train_net.py`` passes them to
``cfg.merge_from_list`` (pairs) and ``lazyconfig_train_net.py`` to ``LazyConfig.apply_overrides``
(``a.b=c``). :func:`apply_overrides` takes either, item by item, on a yacs-style :class:`CfgNode`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from d2lightning.config.config import CfgNode
from d2lightning.config.errors import ConfigError

__all__ = ["apply_overrides", "parse_overrides"]

_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)=(.*)", re.DOTALL)


def parse_overrides(opts: Sequence[str]) -> list[tuple[str, str, bool]]:
    """Split override items into ``(key, raw_value, is_assignment)``.

    An item in key position of the form ``dotted.key=value`` is one override (``is_assignment``);
    otherwise the item is a key and the next item its value (so a value may itself contain ``=``).

    Raises:
        TypeError: ``opts`` is not a sequence of strings.
        ConfigError: a key has no value after it.
    """
    if isinstance(opts, (str, bytes)) or not isinstance(opts, Sequence):
        raise TypeError(f"opts must be a list of strings, got {type(opts).__name__} {opts!r}")
    if not all(isinstance(item, str) for item in opts):
        raise TypeError(f"opts must be a list of strings, got {opts!r}")
    parsed: list[tuple[str, str, bool]] = []
    i = 0
    while i < len(opts):
        match = _ASSIGNMENT.fullmatch(opts[i])
        if match:
            parsed.append((match.group(1), match.group(2), True))
            i += 1
        elif i + 1 < len(opts):
            parsed.append((opts[i], opts[i + 1], False))
            i += 2
        else:
            raise ConfigError(
                f"Override {opts[i]!r} has no value: give 'KEY VALUE' pairs or 'KEY=VALUE' items (opts: {list(opts)})",
                key=opts[i],
            )
    return parsed


def apply_overrides(cfg: CfgNode, opts: Sequence[str]) -> CfgNode:
    """Apply ``opts`` to ``cfg`` in place (all-or-nothing) and return it.

    Mirrors ``cfg.merge_from_list(opts)`` for ``KEY VALUE`` pairs and ``LazyConfig.apply_overrides`` for
    ``a.b=c`` items; the forms may be mixed. Values are read as yacs does (``ast.literal_eval``; a
    non-literal stays a string); ``a.b=c`` values also understand ``true``/``false``/``null``.

    Args:
        cfg: the config to change.
        opts: e.g. ``["SOLVER.BASE_LR", "0.01", "SOLVER.STEPS=(12, 18)"]`` (``args.opts``).

    Returns:
        ``cfg``.

    Raises:
        UnknownKeyError: a key the cfg does not have (the message suggests the closest one).
        ConfigTypeError: a value of the wrong type or outside the key's domain.
        FrozenConfigError: ``cfg`` is frozen.
        ConfigError: a key without a value.
    """
    if not isinstance(cfg, CfgNode):
        raise TypeError(f"cfg must be a d2lightning CfgNode, got {type(cfg).__name__}")
    items = []
    for key, raw, is_assignment in parse_overrides(opts):
        text = f"{key}={raw}" if is_assignment else f"{key} {raw}"
        items.append((key, raw, f"override {text!r}", is_assignment))
    cfg._set_overrides(items)
    return cfg

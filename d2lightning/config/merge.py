"""Setting values in a :class:`~d2lightning.config.CfgNode`: type checks, validators and tree merges.

The yacs ``_merge_a_into_b`` / ``merge_from_list`` / ``_check_and_coerce_cfg_value_type`` logic, with
d2lightning's messages: every error names the full key, where the value came from (``origin``: a file or
an override) and what the key accepts. A stored ``Mapping`` is always a section (a ``CfgNode``): leaf values
are never mappings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from d2lightning.config import schema
from d2lightning.config.errors import ConfigError, ConfigTypeError, in_origin, unknown_key_error
from d2lightning.config.loader import BASE_KEY
from d2lightning.config.spec import coerce_value, decode_candidates, describe_types, describe_value, types_of

if TYPE_CHECKING:
    from d2lightning.config.config import CfgNode

__all__ = ["merge_tree", "section_error", "set_path", "type_error", "typed_value"]


def accepted_types(node: CfgNode, key: str) -> tuple[type, ...] | None:
    """The types ``node[key]`` accepts: from the key registry, else from its current value (yacs)."""
    spec = schema.spec_for(node._full(key)) if node._schema else None
    return spec.accepted_types() if spec is not None else types_of(dict.get(node, key))


def typed_value(node: CfgNode, key: str, candidates: list[Any], origin: str | None) -> Any:
    """The first of ``candidates`` that ``node[key]`` accepts, converted and run through its validator."""
    types = accepted_types(node, key)
    for candidate in candidates:
        ok, value = coerce_value(candidate, types)
        if ok:
            break
    else:
        raise type_error(node, key, candidates[0], types, origin)
    spec = schema.spec_for(node._full(key)) if node._schema else None
    if spec is not None and spec.validator is not None:
        try:
            value = spec.validator(value)
        except (ValueError, TypeError) as e:
            raise ConfigTypeError(
                f"Invalid value {value!r} for config key {node._full(key)!r}{in_origin(origin)}: {e}",
                key=node._full(key),
                origin=origin,
            ) from None
    return value


def type_error(node: CfgNode, key: str, value: Any, types: Any, origin: str | None) -> ConfigTypeError:
    """The error for a value of the wrong type."""
    full = node._full(key)
    expected = describe_types(types) if types else "a str, int, float, bool, None or a list/tuple of those"
    return ConfigTypeError(
        f"Config key {full!r}{in_origin(origin)} expects {expected}, got {describe_value(value)}.",
        key=full,
        origin=origin,
    )


def section_error(node: CfgNode, key: str, value: Any, origin: str | None) -> ConfigTypeError:
    """The error for a plain value given to a section."""
    full = node._full(key)
    return ConfigTypeError(
        f"Config key {full!r}{in_origin(origin)} is a section; set its keys (e.g. {full}.<KEY>), "
        f"got {describe_value(value)}.",
        key=full,
        origin=origin,
    )


def merge_tree(node: CfgNode, tree: Mapping[str, Any], origins: Mapping[str, str], default: str, root: CfgNode) -> None:
    """Merge a nested mapping into ``node`` (yacs ``_merge_a_into_b``); string values are literal_eval'ed.

    Args:
        node: the section to merge into.
        tree: the values; every key must exist unless ``node`` allows new keys.
        origins: for dotted leaf keys, where their value came from (e.g. ``"file 'a.yaml'"``).
        default: the origin of keys not in ``origins``.
        root: the section the merge started at, whose keys are suggested for an unknown key.
    """
    for key, raw in tree.items():
        full = node._full(str(key))
        origin = origins.get(full) or next((o for k, o in origins.items() if k.startswith(full + ".")), default)
        if key == BASE_KEY:
            raise ConfigError(f"The key {BASE_KEY!r} is only allowed in files ({origin}).", key=full)
        current = dict.get(node, key)
        if key not in node:
            if not node.is_new_allowed():
                raise unknown_key_error(full, root._flat_keys(), origin)
            node._check_mutable(key)
            node._store(key, raw if isinstance(raw, Mapping) else decode_candidates(raw)[0], copy_nodes=True)
        elif isinstance(current, Mapping):
            if not isinstance(raw, Mapping):
                raise section_error(node, key, raw, origin)
            merge_tree(cast("CfgNode", current), raw, origins, default, root)
        elif isinstance(raw, Mapping):
            raise type_error(node, key, raw, accepted_types(node, key), origin)
        else:
            node._check_mutable(key)
            dict.__setitem__(node, key, typed_value(node, key, decode_candidates(raw), origin))


def set_path(root: CfgNode, full_key: str, raw: Any, origin: str, yaml_words: bool) -> None:
    """Set the existing dotted key ``full_key`` below ``root`` (yacs ``merge_from_list``, one pair)."""
    if full_key == BASE_KEY or full_key.endswith("." + BASE_KEY):
        raise ConfigError(f"The key {BASE_KEY!r} is only allowed in files ({origin}).", key=full_key)
    node = root
    *parents, key = full_key.split(".")
    for part in parents:
        child = dict.get(node, part)
        if not isinstance(child, Mapping):
            raise unknown_key_error(root._full(full_key), root._flat_keys(), origin)
        node = cast("CfgNode", child)
    if key not in node:
        raise unknown_key_error(root._full(full_key), root._flat_keys(), origin)
    if isinstance(dict.get(node, key), Mapping):
        raise section_error(node, key, raw, origin)
    node._check_mutable(key)
    dict.__setitem__(node, key, typed_value(node, key, decode_candidates(raw, yaml_words=yaml_words), origin))

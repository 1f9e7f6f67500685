"""Loading a checkpoint's weights into a model the way fvcore's ``Checkpointer._load_model`` does.

Non-strict: a ``module.`` prefix (from a DDP/DataParallel-wrapped model) is stripped, entries whose shape
differs from the model's are dropped with a warning each, and the missing and unexpected keys are logged,
grouped by module (``backbone.conv1.{bias, weight}``) like fvcore's messages.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, MutableMapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

__all__ = [
    "IncompatibleKeys",
    "get_missing_parameters_message",
    "get_unexpected_parameters_message",
    "load_model_state",
    "strip_prefix_if_present",
]


class IncompatibleKeys(NamedTuple):
    """What did not load: like torch's ``_IncompatibleKeys`` plus ``(key, ckpt_shape, model_shape)`` triples."""

    missing_keys: list[str]
    unexpected_keys: list[str]
    incorrect_shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]]


def strip_prefix_if_present(state_dict: MutableMapping[str, Any], prefix: str) -> None:
    """Remove ``prefix`` from every key, in place, if and only if every non-empty key starts with it.

    The ``_metadata`` attribute torch attaches to state dicts is renamed the same way.
    """
    keys = sorted(state_dict.keys())
    if not keys or not all(not k or k.startswith(prefix) for k in keys):
        return
    for key in keys:
        state_dict[key[len(prefix) :]] = state_dict.pop(key)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        for key in list(metadata.keys()):
            if key:  # "" belongs to the wrapper itself
                metadata[key[len(prefix) :]] = metadata.pop(key)


def convert_ndarray_to_tensor(state_dict: MutableMapping[str, Any]) -> None:
    """Turn numpy arrays into tensors, in place.

    Raises:
        ValueError: naming the first entry that is neither.
    """
    for key in list(state_dict.keys()):
        value = state_dict[key]
        if isinstance(value, np.ndarray):
            state_dict[key] = torch.from_numpy(value)
        elif not isinstance(value, torch.Tensor):
            raise ValueError(f"Unsupported type found in checkpoint! {key}: {type(value)}")


def load_model_state(model: nn.Module, state_dict: MutableMapping[str, Any]) -> IncompatibleKeys:
    """Load ``state_dict`` into ``model`` non-strictly, dropping shape-mismatched entries (fvcore's rules).

    ``state_dict`` is modified: arrays become tensors, a ``module.`` prefix is stripped and mismatched
    entries are removed. Lazy (uninitialized) parameters accept any shape.
    """
    convert_ndarray_to_tensor(state_dict)
    strip_prefix_if_present(state_dict, "module.")
    model_state = model.state_dict()
    incorrect: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    for key in list(state_dict.keys()):
        if key not in model_state:
            continue
        target = model_state[key]
        if isinstance(target, nn.parameter.UninitializedParameter):
            continue
        shape_model, shape_ckpt = tuple(target.shape), tuple(state_dict[key].shape)
        if shape_model != shape_ckpt and not _expects_shape_change(model, key):
            incorrect.append((key, shape_ckpt, shape_model))
            state_dict.pop(key)
    result = model.load_state_dict(state_dict, strict=False)
    return IncompatibleKeys(list(result.missing_keys), list(result.unexpected_keys), incorrect)


def _expects_shape_change(model: nn.Module, key: str) -> bool:
    """Per-channel quantization observers resize their buffers while loading; leave their entries alone."""
    from torch.ao.quantization import FakeQuantizeBase, ObserverBase

    module: Any = model
    for part in key.split(".")[:-1]:
        module = getattr(module, part, None)
        if module is None:
            return False
    return isinstance(module, ObserverBase | FakeQuantizeBase)


def log_incompatible_keys(logger: logging.Logger, model: nn.Module, incompatible: IncompatibleKeys) -> None:
    """Log one warning per dropped shape, then the missing keys (aliases excluded) and unexpected keys."""
    for key, shape_ckpt, shape_model in incompatible.incorrect_shapes:
        logger.warning(
            f"Skip loading parameter '{key}' to the model due to incompatible shapes: {shape_ckpt} in the "
            f"checkpoint but {shape_model} in the model! You might want to double check if this is expected."
        )
    missing = filter_reused_missing_keys(model, incompatible.missing_keys)
    if missing:
        logger.warning(get_missing_parameters_message(missing))
    if incompatible.unexpected_keys:
        logger.warning(get_unexpected_parameters_message(incompatible.unexpected_keys))


def filter_reused_missing_keys(model: nn.Module, keys: list[str]) -> list[str]:
    """Drop missing keys whose tensor was loaded under another name (a module registered twice)."""
    missing = set(keys)
    names_of: defaultdict[int, set[str]] = defaultdict(set)
    for prefix, module in _named_modules_with_dup(model):
        tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        for name, tensor in tensors:
            names_of[id(tensor)].add(f"{prefix}.{name}" if prefix else name)
    for names in names_of.values():
        if names & missing and not names <= missing:
            missing -= names
    return [k for k in keys if k in missing]


def _named_modules_with_dup(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """``named_modules()`` that also yields a module once per name it is registered under."""
    yield prefix, model
    for name, child in model._modules.items():
        if child is not None:
            yield from _named_modules_with_dup(child, f"{prefix}.{name}" if prefix else name)


def get_missing_parameters_message(keys: list[str]) -> str:
    """The warning for model keys absent from the checkpoint, one line per module."""
    lines = sorted(head + _group_to_str(tails) for head, tails in _group_keys(keys).items())
    return "Some model parameters or buffers are not found in the checkpoint:\n" + "\n".join(lines)


def get_unexpected_parameters_message(keys: list[str]) -> str:
    """The warning for checkpoint keys the model does not use, one line per module."""
    lines = ["  " + head + _group_to_str(tails) for head, tails in _group_keys(keys).items()]
    return "The checkpoint state_dict contains keys that are not used by the model:\n" + "\n".join(lines)


def _group_keys(keys: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        head, dot, tail = key.rpartition(".")
        if dot:
            groups[head].append(tail)
        else:
            groups.setdefault(key, [])  # a key without a dot is a group of its own
    return groups


def _group_to_str(tails: list[str]) -> str:
    if not tails:
        return ""
    if len(tails) == 1:
        return "." + tails[0]
    return ".{" + ", ".join(sorted(tails)) + "}"

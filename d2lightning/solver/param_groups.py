"""Optimizer param groups as detectron2 builds them (``get_default_optimizer_params``).

Mirrors ``detectron2.solver.build.get_default_optimizer_params`` and ``reduce_param_groups``.

The group layout (which params, in which order, with which hyperparameters) matches detectron2's exactly,
so an optimizer ``state_dict`` saved by detectron2 loads into an optimizer built here and vice versa.
"""

from __future__ import annotations

import copy
import itertools
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import torch

from d2lightning.solver import _checks

__all__ = ["NORM_MODULE_TYPES", "get_default_optimizer_params", "reduce_param_groups"]

#: Module types whose parameters get ``weight_decay_norm`` (detectron2's list; its NaiveSyncBatchNorm
#: subclasses BatchNorm2d and FrozenBatchNorm2d has no parameters).
NORM_MODULE_TYPES: tuple[type[torch.nn.Module], ...] = (
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
    torch.nn.SyncBatchNorm,
    torch.nn.GroupNorm,
    torch.nn.InstanceNorm1d,
    torch.nn.InstanceNorm2d,
    torch.nn.InstanceNorm3d,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
)


def _optional_real(name: str, value: Any) -> float | None:
    return None if value is None else _checks.real(name, value, non_negative=True)


def _check_overrides(overrides: Any) -> dict[str, dict[str, Any]]:
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise TypeError(f"overrides must be a dict of param name -> dict of hyperparameters, got {overrides!r}")
    checked: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        if not isinstance(value, Mapping):
            raise TypeError(f"overrides[{key!r}] must be a dict of hyperparameters, got {value!r}")
        checked[str(key)] = dict(value)
    return checked


def get_default_optimizer_params(
    model: torch.nn.Module,
    base_lr: float | None = None,
    weight_decay: float | None = None,
    weight_decay_norm: float | None = None,
    bias_lr_factor: float | None = 1.0,
    weight_decay_bias: float | None = None,
    lr_factor_func: Callable[[str], float] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """detectron2 ``get_default_optimizer_params``: param groups with per-kind hyperparameters.

    Walks ``model.named_modules()`` and each module's own parameters in order, skipping frozen
    (``requires_grad=False``) and already-seen (shared) parameters. Each parameter gets ``lr=base_lr`` and
    ``weight_decay`` when given; ``weight_decay_norm`` if its module is a norm layer (BN, SyncBN, GN, IN,
    LN, LRN); ``lr *= lr_factor_func("<module>.<param>")``; then ``overrides[<param attribute name>]``,
    where a ``bias_lr_factor != 1`` or a ``weight_decay_bias`` become an override for ``"bias"``. Groups
    with identical hyperparameters are then merged (:func:`reduce_param_groups`). Hyperparameters left
    unset fall back to the optimizer's defaults. With only ``weight_decay_norm`` set (detectron2's
    default config) this gives 2 groups: norm params and the rest.

    Args:
        model: the model.
        base_lr: lr of every group; required by ``bias_lr_factor != 1`` and ``lr_factor_func``.
        weight_decay: weight decay of every group.
        weight_decay_norm: weight decay of parameters of normalization layers.
        bias_lr_factor: multiplier of the lr of parameters named ``bias``.
        weight_decay_bias: weight decay of parameters named ``bias``.
        lr_factor_func: maps a full parameter name (``"<module name>.<param name>"``) to an lr factor.
        overrides: hyperparameters for parameters with a given attribute name, e.g.
            ``{"embedding": {"lr": 0.01, "weight_decay": 0.1}}``. Not modified.

    Returns:
        A list of param group dicts for a ``torch.optim.Optimizer``.

    Raises:
        TypeError: ``model`` is not a Module, a number is not a number, ``lr_factor_func`` is not
            callable, or ``overrides`` is not a dict of dicts.
        ValueError: ``bias_lr_factor``/``lr_factor_func`` without ``base_lr``, a negative lr or weight
            decay, or an ``overrides["bias"]`` that conflicts with the bias options.

    Example::

        torch.optim.SGD(get_default_optimizer_params(model, weight_decay_norm=0.0),
                        lr=0.01, weight_decay=1e-4, momentum=0.9)
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    base_lr = _optional_real("base_lr", base_lr)
    weight_decay = _optional_real("weight_decay", weight_decay)
    weight_decay_norm = _optional_real("weight_decay_norm", weight_decay_norm)
    weight_decay_bias = _optional_real("weight_decay_bias", weight_decay_bias)
    if bias_lr_factor is not None:
        bias_lr_factor = _checks.real("bias_lr_factor", bias_lr_factor, non_negative=True)
    if lr_factor_func is not None and not callable(lr_factor_func):
        raise TypeError(f"lr_factor_func must be callable, got {lr_factor_func!r}")
    per_name = _check_overrides(overrides)

    defaults: dict[str, Any] = {}
    if base_lr is not None:
        defaults["lr"] = base_lr
    if weight_decay is not None:
        defaults["weight_decay"] = weight_decay
    bias_overrides: dict[str, Any] = {}
    if bias_lr_factor is not None and bias_lr_factor != 1.0:
        if base_lr is None:
            raise ValueError(f"bias_lr_factor={bias_lr_factor} requires base_lr, got base_lr=None")
        bias_overrides["lr"] = base_lr * bias_lr_factor
    if weight_decay_bias is not None:
        bias_overrides["weight_decay"] = weight_decay_bias
    if bias_overrides:
        if "bias" in per_name:
            raise ValueError(
                "Conflicting overrides for 'bias': overrides['bias'] is set together with "
                "bias_lr_factor != 1 or weight_decay_bias"
            )
        per_name["bias"] = bias_overrides
    if lr_factor_func is not None and base_lr is None:
        raise ValueError("lr_factor_func requires base_lr, got base_lr=None")

    params: list[dict[str, Any]] = []
    seen: set[torch.nn.Parameter] = set()
    for module_name, module in model.named_modules():
        for param_name, value in module.named_parameters(recurse=False):
            if not value.requires_grad or value in seen:
                continue
            seen.add(value)
            hyperparams = copy.copy(defaults)
            if isinstance(module, NORM_MODULE_TYPES) and weight_decay_norm is not None:
                hyperparams["weight_decay"] = weight_decay_norm
            if lr_factor_func is not None:
                hyperparams["lr"] *= lr_factor_func(f"{module_name}.{param_name}")
            hyperparams.update(per_name.get(param_name, {}))
            params.append({"params": [value], **hyperparams})
    return reduce_param_groups(params)


def _hyperparams(group: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k not in ("params", "param_names")}


def _expand_param_groups(params: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per parameter, in first-seen order; later groups override earlier hyperparameters."""
    per_param: dict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
    for group in params:
        if "params" not in group:
            raise ValueError(f"every param group needs a 'params' key, got keys {sorted(group)}")
        hyper = _hyperparams(group)
        if "param_names" in group:
            for name, param in zip(group["param_names"], group["params"], strict=True):
                per_param[param].update({"param_names": [name], "params": [param], **hyper})
        else:
            for param in group["params"]:
                per_param[param].update({"params": [param], **hyper})
    return list(per_param.values())


def reduce_param_groups(params: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """detectron2 ``reduce_param_groups``: merge param groups that have identical hyperparameters.

    Groups are first split into one entry per parameter (a parameter listed twice takes the later
    group's values), then regrouped by their hyperparameters (compared as ordered ``(key, value)``
    tuples, as detectron2 does), keeping first-seen order; ``param_names`` are carried along. Few groups
    let PyTorch's multi-tensor (``foreach``) optimizers run fast.

    Args:
        params: param group dicts, each with a ``"params"`` list.

    Returns:
        The merged param group dicts.

    Raises:
        ValueError: a group has no ``"params"`` key.
    """
    groups: dict[tuple[tuple[str, Any], ...], list[dict[str, Any]]] = defaultdict(list)
    for item in _expand_param_groups(params):
        groups[tuple(_hyperparams(item).items())].append(item)
    merged = []
    for key, items in groups.items():
        group: dict[str, Any] = dict(key)
        group["params"] = list(itertools.chain.from_iterable(i["params"] for i in items))
        if "param_names" in items[0]:
            group["param_names"] = list(itertools.chain.from_iterable(i["param_names"] for i in items))
        merged.append(group)
    return merged

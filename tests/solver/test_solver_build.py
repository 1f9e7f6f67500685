"""Tests for d2lightning.solver param groups and build_optimizer (detectron2's grouping and defaults)."""

import pytest
import torch
from torch import nn

from d2lightning.solver import build_optimizer, get_default_optimizer_params, reduce_param_groups
from d2lightning.solver.param_groups import _expand_param_groups
from tests.helpers.solver import solver_cfg


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.gn = nn.GroupNorm(1, 2)
        self.ln = nn.LayerNorm(2)
        self.fc = nn.Linear(2, 2)


def names(model, group):
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for p in group["params"]]


def layout(model, groups):
    return [({k: v for k, v in g.items() if k != "params"}, names(model, g)) for g in groups]


NORM = ["bn.weight", "bn.bias", "gn.weight", "gn.bias", "ln.weight", "ln.bias"]


def test_default_config_gives_two_groups():
    model = Net()
    groups = get_default_optimizer_params(model, base_lr=0.02, weight_decay_norm=0.0, bias_lr_factor=1.0)
    assert layout(model, groups) == [
        ({"lr": 0.02}, ["conv.weight", "conv.bias", "fc.weight", "fc.bias"]),
        ({"lr": 0.02, "weight_decay": 0.0}, NORM),
    ]


def test_all_norm_types_get_weight_decay_norm():
    norms = [
        nn.BatchNorm1d(2),
        nn.BatchNorm3d(2),
        nn.SyncBatchNorm(2),
        nn.InstanceNorm1d(2, affine=True),
        nn.InstanceNorm2d(2, affine=True),
        nn.InstanceNorm3d(2, affine=True),
    ]
    model = nn.Sequential(*norms, nn.Linear(2, 2))
    groups = get_default_optimizer_params(model, weight_decay=0.5, weight_decay_norm=0.25)
    assert [(g["weight_decay"], len(g["params"])) for g in groups] == [(0.25, 12), (0.5, 2)]


def test_bias_lr_factor():
    model = Net()
    groups = get_default_optimizer_params(model, base_lr=0.02, weight_decay_norm=0.0, bias_lr_factor=2.0)
    assert layout(model, groups) == [
        ({"lr": 0.02}, ["conv.weight", "fc.weight"]),
        ({"lr": 0.04}, ["conv.bias", "fc.bias"]),
        ({"lr": 0.02, "weight_decay": 0.0}, ["bn.weight", "gn.weight", "ln.weight"]),
        ({"lr": 0.04, "weight_decay": 0.0}, ["bn.bias", "gn.bias", "ln.bias"]),
    ]


def test_weight_decay_bias_merges_with_identical_norm_group():
    model = Net()
    groups = get_default_optimizer_params(model, base_lr=0.02, weight_decay_norm=0.0, weight_decay_bias=0.0)
    assert layout(model, groups) == [
        ({"lr": 0.02}, ["conv.weight", "fc.weight"]),
        ({"lr": 0.02, "weight_decay": 0.0}, ["conv.bias", *NORM, "fc.bias"]),
    ]


def test_overrides_apply_by_param_name_and_are_not_modified():
    model = Net()
    overrides = {"weight": {"lr": 1.0}}
    groups = get_default_optimizer_params(model, base_lr=0.02, bias_lr_factor=3.0, overrides=overrides)
    assert overrides == {"weight": {"lr": 1.0}}
    assert layout(model, groups) == [
        ({"lr": 1.0}, ["conv.weight", "bn.weight", "gn.weight", "ln.weight", "fc.weight"]),
        ({"lr": 0.06}, ["conv.bias", "bn.bias", "gn.bias", "ln.bias", "fc.bias"]),
    ]


def test_lr_factor_func_gets_full_names():
    model = Net()
    seen = []

    def factor(name):
        seen.append(name)
        return 0.5 if name.startswith("fc.") else 1.0

    groups = get_default_optimizer_params(model, base_lr=0.02, lr_factor_func=factor)
    assert seen == ["conv.weight", "conv.bias", *NORM, "fc.weight", "fc.bias"]
    assert layout(model, groups) == [
        ({"lr": 0.02}, ["conv.weight", "conv.bias", *NORM]),
        ({"lr": 0.01}, ["fc.weight", "fc.bias"]),
    ]


def test_frozen_and_shared_params_are_skipped():
    model = Net()
    model.conv.weight.requires_grad_(False)
    model.fc2 = nn.Linear(2, 2)
    model.fc2.weight = model.fc.weight  # shared: listed once
    groups = get_default_optimizer_params(model, weight_decay_norm=0.0)
    assert layout(model, groups) == [
        ({}, ["conv.bias", "fc.weight", "fc.bias", "fc2.bias"]),
        ({"weight_decay": 0.0}, NORM),
    ]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"bias_lr_factor": 2.0}, ValueError, "bias_lr_factor=2.0 requires base_lr"),
        ({"lr_factor_func": lambda n: 1.0}, ValueError, "lr_factor_func requires base_lr"),
        ({"lr_factor_func": 3, "base_lr": 1.0}, TypeError, "lr_factor_func must be callable"),
        (
            {"weight_decay_bias": 0.0, "overrides": {"bias": {"lr": 1.0}}},
            ValueError,
            "Conflicting overrides for 'bias'",
        ),
        ({"overrides": {"bias": 0.1}}, TypeError, r"overrides\['bias'\] must be a dict"),
        ({"base_lr": -1.0}, ValueError, "base_lr must be >= 0"),
        ({"weight_decay_norm": "0"}, TypeError, "weight_decay_norm must be a finite real number"),
    ],
)
def test_get_default_optimizer_params_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        get_default_optimizer_params(Net(), **kwargs)


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        get_default_optimizer_params([nn.Parameter(torch.zeros(1))])


def test_expand_param_groups_detectron2_case():
    params = [
        {"params": ["p1", "p2", "p3", "p4"], "lr": 1.0, "weight_decay": 3.0},
        {"params": ["p2", "p3", "p5"], "lr": 2.0, "momentum": 2.0},
        {"params": ["p1"], "weight_decay": 4.0},
    ]
    assert _expand_param_groups(params) == [
        {"params": ["p1"], "lr": 1.0, "weight_decay": 4.0},
        {"params": ["p2"], "lr": 2.0, "weight_decay": 3.0, "momentum": 2.0},
        {"params": ["p3"], "lr": 2.0, "weight_decay": 3.0, "momentum": 2.0},
        {"params": ["p4"], "lr": 1.0, "weight_decay": 3.0},
        {"params": ["p5"], "lr": 2.0, "momentum": 2.0},
    ]


def test_reduce_param_groups_detectron2_case():
    params = [
        {"params": ["p1"], "lr": 1.0, "weight_decay": 4.0},
        {"params": ["p2", "p6"], "lr": 2.0, "weight_decay": 3.0, "momentum": 2.0},
        {"params": ["p3"], "lr": 2.0, "weight_decay": 3.0, "momentum": 2.0},
        {"params": ["p4"], "lr": 1.0, "weight_decay": 3.0},
        {"params": ["p5"], "lr": 2.0, "momentum": 2.0},
    ]
    assert reduce_param_groups(params) == [
        {"lr": 1.0, "weight_decay": 4.0, "params": ["p1"]},
        {"lr": 2.0, "weight_decay": 3.0, "momentum": 2.0, "params": ["p2", "p6", "p3"]},
        {"lr": 1.0, "weight_decay": 3.0, "params": ["p4"]},
        {"lr": 2.0, "momentum": 2.0, "params": ["p5"]},
    ]


def test_reduce_param_groups_keeps_param_names():
    params = [
        {"params": ["a", "b"], "param_names": ["A", "B"], "lr": 1.0},
        {"params": ["c"], "param_names": ["C"], "lr": 1.0},
    ]
    assert reduce_param_groups(params) == [{"lr": 1.0, "params": ["a", "b", "c"], "param_names": ["A", "B", "C"]}]


def test_reduce_param_groups_requires_params_key():
    with pytest.raises(ValueError, match="'params' key"):
        reduce_param_groups([{"lr": 1.0}])


def test_build_optimizer_default_is_detectron2_sgd():
    model = Net()
    optimizer = build_optimizer(solver_cfg(BASE_LR=0.02), model)
    assert type(optimizer) is torch.optim.SGD
    assert [len(g["params"]) for g in optimizer.param_groups] == [4, 6]
    expected = {"lr": 0.02, "momentum": 0.9, "nesterov": False, "foreach": True}
    assert [{k: g[k] for k in expected} for g in optimizer.param_groups] == [expected, expected]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 0.0]


def test_build_optimizer_nesterov_and_bias_factor():
    optimizer = build_optimizer(solver_cfg(BASE_LR=0.02, NESTEROV=True, BIAS_LR_FACTOR=2.0), Net())
    assert [g["lr"] for g in optimizer.param_groups] == [0.02, 0.04, 0.02, 0.04]
    assert all(g["nesterov"] for g in optimizer.param_groups)


@pytest.mark.parametrize("name", ["ADAMW", "adamw", "AdamW"])
def test_build_optimizer_adamw(name):
    optimizer = build_optimizer(solver_cfg(BASE_LR=0.02, WEIGHT_DECAY=0.05, OPTIMIZER=name), Net())
    assert type(optimizer) is torch.optim.AdamW
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in optimizer.param_groups] == [
        (0.02, 0.05, 4),
        (0.02, 0.0, 6),
    ]
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)


def test_build_optimizer_explicit_sgd_and_none_mean_sgd():
    assert type(build_optimizer(solver_cfg(OPTIMIZER="sgd"), Net())) is torch.optim.SGD
    assert type(build_optimizer(solver_cfg(OPTIMIZER=None), Net())) is torch.optim.SGD


def test_build_optimizer_unknown_optimizer_names_the_key():
    with pytest.raises(ValueError, match=r"SOLVER.OPTIMIZER must be one of \['SGD', 'ADAMW'\], got 'ADAM'"):
        build_optimizer(solver_cfg(OPTIMIZER="adam"), Net())


def test_build_optimizer_steps_a_model():
    model = nn.Linear(2, 1)
    optimizer = build_optimizer(solver_cfg(BASE_LR=0.1, MOMENTUM=0.0, WEIGHT_DECAY=0.0), model)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.0)
    model(torch.tensor([[1.0, 2.0]])).sum().backward()
    optimizer.step()
    assert model.weight.detach().flatten().tolist() == pytest.approx([0.9, 0.8])
    assert model.bias.item() == pytest.approx(-0.1)

"""Tests for d2lightning.solver.lr_scheduler and build_lr_scheduler, against detectron2's numbers.

The four curves below are detectron2's observed ``lr`` at iterations 0..29
(/work/shared/reference/detectron2-oracle.json, "lr_schedules"); the 5/1.004/... oracle is detectron2's
``tests/test_scheduler.py``.
"""

import logging
import math

import pytest
import torch

from d2lightning.solver import (
    ConstantParamScheduler,
    CosineParamScheduler,
    LRMultiplier,
    LRScheduler,
    MultiStepParamScheduler,
    StepWithFixedGammaParamScheduler,
    WarmupCosineLR,
    WarmupMultiStepLR,
    WarmupParamScheduler,
    build_lr_scheduler,
)
from tests.helpers.solver import solver_cfg


def make_optimizer(lr):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def lrs_used(optimizer, scheduler, num_iters):
    """The lr each iteration trains with: read it, step the optimizer, then the scheduler (d2's order)."""
    lrs = []
    for _ in range(num_iters):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


ORACLE_CFG = {"BASE_LR": 0.02, "MAX_ITER": 30, "STEPS": [15, 25], "WARMUP_ITERS": 6, "WARMUP_FACTOR": 0.001}
MULTISTEP_WARMUP = [
    2e-05,
    0.0033499999999999997,
    0.006679999999999999,
    0.01001,
    0.01334,
    0.016669999999999997,
]
ORACLE_CURVES = {
    "WarmupMultiStepLR": (
        {},
        MULTISTEP_WARMUP + [0.02] * 9 + [0.002] * 10 + [0.00020000000000000004] * 5,
    ),
    "WarmupMultiStepLR WARMUP_METHOD=constant": (
        {"WARMUP_METHOD": "constant"},
        [2e-05] * 6 + [0.02] * 9 + [0.002] * 10 + [0.00020000000000000004] * 5,
    ),
    "WarmupCosineLR": (
        {"LR_SCHEDULER_NAME": "WarmupCosineLR"},
        [
            2e-05, 0.003031694990624912, 0.006043389981249824, 0.009055084971874737,
            0.012066779962499647, 0.015078474953124562, 0.018090169943749474, 0.017431448254773944,
            0.016691306063588582, 0.015877852522924733, 0.015, 0.014067366430758003,
            0.013090169943749475, 0.012079116908177591, 0.011045284632676535, 0.01,
            0.008954715367323467, 0.00792088309182241, 0.006909830056250526, 0.0059326335692419995,
            0.005000000000000003, 0.0041221474770752695, 0.003308693936411421, 0.0025685517452260563,
            0.0019098300562505265, 0.001339745962155613, 0.0008645454235739902, 0.0004894348370484647,
            0.0002185239926619431, 5.47810463172671e-05,
        ],
    ),
    "WarmupCosineLR BASE_LR_END=0.001": (
        {"LR_SCHEDULER_NAME": "WarmupCosineLR", "BASE_LR_END": 0.001},
        [
            2e-05, 0.0030476102410936664, 0.006075220482187333, 0.009102830723281,
            0.012130440964374664, 0.015158051205468332, 0.018185661446562, 0.017559875842035246,
            0.016856740760409154, 0.016083959896778494, 0.01525, 0.014363998109220105,
            0.013435661446562002, 0.012475161062768712, 0.011493020401042709, 0.0105,
            0.009506979598957292, 0.008524838937231287, 0.007564338553438, 0.006636001890779899,
            0.005750000000000002, 0.004916040103221506, 0.00414325923959085, 0.0034401241579647534,
            0.0028143385534380007, 0.0022727586640478325, 0.001821318152395291, 0.0014649630951960417,
            0.001207597793028846, 0.0010520419940014038,
        ],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ORACLE_CURVES))
def test_build_lr_scheduler_matches_detectron2_oracle(name):
    extra, expected = ORACLE_CURVES[name]
    cfg = solver_cfg(**ORACLE_CFG, **extra)
    optimizer = make_optimizer(cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    assert isinstance(scheduler, LRMultiplier)
    assert isinstance(scheduler, LRScheduler)
    assert lrs_used(optimizer, scheduler, 30) == pytest.approx(expected, rel=1e-9)


def test_build_step_with_fixed_gamma():
    cfg = solver_cfg(**ORACLE_CFG, LR_SCHEDULER_NAME="WarmupStepWithFixedGammaLR")
    optimizer = make_optimizer(0.02)
    scheduler = build_lr_scheduler(cfg, optimizer)
    # 4 values over 30 iterations: [1, .1, .01, .001] switch where int((i / 30 + 1e-6) * 4) changes.
    expected = MULTISTEP_WARMUP + [0.02] * 2 + [0.002] * 7 + [0.0002] * 8 + [2e-05] * 7
    assert lrs_used(optimizer, scheduler, 30) == pytest.approx(expected, rel=1e-9)
    # lrs_used also made the step after the last iteration (where = 1): detectron2 raises IndexError there.
    assert scheduler.last_epoch == 30
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-05, rel=1e-9)


def test_spec_oracle_warmup_multistep():
    optimizer = make_optimizer(5.0)
    multiplier = WarmupParamScheduler(
        MultiStepParamScheduler([1, 0.1, 0.01, 0.001], milestones=[10, 15, 20], num_updates=30), 0.001, 5 / 30
    )
    scheduler = LRMultiplier(optimizer, multiplier, 30)
    expected = [0.005, 1.004, 2.003, 3.002, 4.001] + [5.0] * 5 + [0.5] * 5 + [0.05] * 5 + [0.005] * 10
    assert lrs_used(optimizer, scheduler, 30) == pytest.approx(expected, rel=1e-9)


def test_warmup_cosine_follows_cosine_after_warmup():
    optimizer = make_optimizer(5.0)
    scheduler = LRMultiplier(optimizer, WarmupParamScheduler(CosineParamScheduler(1, 0), 0.001, 5 / 30), 30)
    lrs = [*lrs_used(optimizer, scheduler, 30), optimizer.param_groups[0]["lr"]]
    assert lrs[0] == 0.005
    for i in range(5, 31):
        assert lrs[i] == pytest.approx(2.5 * (1.0 + math.cos(math.pi * i / 30)), rel=1e-9, abs=1e-12)
    assert lrs[4] == pytest.approx(0.001 * 5 * 0.2 + 5 * 0.5 * (1 + math.cos(math.pi / 6)) * 0.8)


def test_warmup_step_with_fixed_gamma_rescaled():
    optimizer = make_optimizer(5.0)
    multiplier = WarmupParamScheduler(
        StepWithFixedGammaParamScheduler(base_value=1.0, gamma=0.1, num_decays=4, num_updates=30),
        0.001,
        5 / 30,
        rescale_interval=True,
    )
    scheduler = LRMultiplier(optimizer, multiplier, 30)
    expected = [0.005, 1.004, 2.003, 3.002, 4.001, *[5.0] * 5, *[0.5] * 5, *[0.05] * 5, *[0.005] * 5]
    assert lrs_used(optimizer, scheduler, 30) == pytest.approx(expected + [0.0005] * 5, rel=1e-9)


@pytest.mark.parametrize("base_lr_end", [0.0, 0.5])
def test_cosine_ends_at_base_lr_end(base_lr_end):
    cfg = solver_cfg(
        LR_SCHEDULER_NAME="WarmupCosineLR",
        MAX_ITER=100,
        WARMUP_ITERS=10,
        WARMUP_FACTOR=0.1,
        BASE_LR=5.0,
        BASE_LR_END=base_lr_end,
    )
    optimizer = make_optimizer(5.0)
    scheduler = build_lr_scheduler(cfg, optimizer)
    assert optimizer.param_groups[0]["lr"] == 0.5
    lrs_used(optimizer, scheduler, 100)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(base_lr_end, abs=1e-12)


def test_warmup_longer_than_training_is_clipped_to_whole_run():
    for rescale in (False, True):
        optimizer = make_optimizer(0.02)
        cfg = solver_cfg(BASE_LR=0.02, MAX_ITER=10, WARMUP_ITERS=20, STEPS=[], RESCALE_INTERVAL=rescale)
        scheduler = build_lr_scheduler(cfg, optimizer)
        lrs = lrs_used(optimizer, scheduler, 10)
        assert lrs == pytest.approx([0.02 * (k / 10 + 0.001 * (1 - k / 10)) for k in range(10)], rel=1e-9)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02)  # after the last step


def test_steps_above_max_iter_are_dropped_with_warning(caplog):
    optimizer = make_optimizer(1.0)
    cfg = solver_cfg(BASE_LR=1.0, MAX_ITER=10, WARMUP_ITERS=0, STEPS=[5, 30])
    with caplog.at_level(logging.WARNING):
        scheduler = build_lr_scheduler(cfg, optimizer)
    assert "SOLVER.STEPS contains values larger than SOLVER.MAX_ITER" in caplog.text
    assert lrs_used(optimizer, scheduler, 10) == pytest.approx([1.0] * 5 + [0.1] * 5)


@pytest.mark.parametrize(
    ("solver", "match"),
    [
        (
            {"LR_SCHEDULER_NAME": "WarmupPolyLR"},
            r"SOLVER.LR_SCHEDULER_NAME='WarmupPolyLR'; accepted: "
            r"\['WarmupMultiStepLR', 'WarmupCosineLR', 'WarmupStepWithFixedGammaLR'\]",
        ),
        (
            {"LR_SCHEDULER_NAME": "WarmupCosineLR", "BASE_LR_END": 0.01},
            r"SOLVER.BASE_LR_END / SOLVER.BASE_LR",
        ),
        ({"LR_SCHEDULER_NAME": "WarmupCosineLR", "BASE_LR": 0.0}, r"SOLVER.BASE_LR must be > 0"),
        ({"MAX_ITER": 0}, r"SOLVER.MAX_ITER must be a positive integer"),
        ({"STEPS": [40000]}, r"SOLVER.STEPS must be strictly increasing"),
        ({"STEPS": [200, 100]}, r"SOLVER.STEPS must be strictly increasing"),
        ({"WARMUP_METHOD": "exp"}, r"SOLVER.WARMUP_METHOD must be one of \['linear', 'constant'\]"),
        ({"WARMUP_ITERS": -1}, r"SOLVER.WARMUP_ITERS must be >= 0"),
        ({"LR_SCHEDULER_NAME": "WarmupStepWithFixedGammaLR", "NUM_DECAYS": 0}, r"SOLVER.NUM_DECAYS"),
        ({"LR_SCHEDULER_NAME": "WarmupStepWithFixedGammaLR", "GAMMA": 0.0}, r"SOLVER.GAMMA must be > 0"),
    ],
)
def test_build_lr_scheduler_errors_name_the_key(solver, match):
    with pytest.raises(ValueError, match=match):
        build_lr_scheduler(solver_cfg(**solver), make_optimizer(0.001))


def test_lr_multiplier_state_dict_round_trip():
    def build():
        optimizer = make_optimizer(5.0)
        multiplier = WarmupParamScheduler(
            MultiStepParamScheduler([1, 0.1, 0.01, 0.001], milestones=[10, 15, 20], num_updates=30),
            0.001,
            5 / 30,
        )
        return optimizer, LRMultiplier(optimizer, multiplier, 30)

    optimizer, scheduler = build()
    lrs_used(optimizer, scheduler, 12)
    state = scheduler.state_dict()
    optimizer_state = optimizer.state_dict()
    assert state == {"base_lrs": [5.0], "last_epoch": 12}
    uninterrupted = lrs_used(optimizer, scheduler, 18)

    resumed_opt, resumed = build()  # as a resumed run does: build both, then load both checkpoints
    resumed_opt.load_state_dict(optimizer_state)
    resumed.load_state_dict(state)
    assert resumed.last_epoch == 12
    assert lrs_used(resumed_opt, resumed, 18) == pytest.approx(uninterrupted, rel=1e-12)
    assert uninterrupted == pytest.approx([0.5] * 3 + [0.05] * 5 + [0.005] * 10)


def test_lr_multiplier_last_iter():
    optimizer = make_optimizer(5.0)
    multiplier = MultiStepParamScheduler([1, 0.1], milestones=[10], num_updates=30)
    first = LRMultiplier(optimizer, multiplier, 30)
    assert (first.last_epoch, optimizer.param_groups[0]["lr"]) == (0, 5.0)
    optimizer.param_groups[0]["lr"] = 123.0  # the scheduler works from initial_lr, not the current lr
    continued = LRMultiplier(optimizer, multiplier, 30, last_iter=9)  # continue after iteration 9
    assert continued.last_epoch == 10
    assert continued.base_lrs == [5.0]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)


def test_lr_multiplier_last_iter_needs_initial_lr():
    with pytest.raises(KeyError, match="initial_lr"):
        LRMultiplier(make_optimizer(5.0), ConstantParamScheduler(1.0), 30, last_iter=3)


def test_lr_multiplier_keeps_ratio_between_groups():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": [params[0]]}, {"params": [params[1]], "lr": 1.0}], lr=0.1)
    scheduler = LRMultiplier(optimizer, MultiStepParamScheduler([1, 0.5], milestones=[2], num_updates=4), 4)
    lrs_used(optimizer, scheduler, 2)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.5])
    assert scheduler.get_last_lr() == pytest.approx([0.05, 0.5])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"multiplier": lambda where: 1.0, "max_iter": 10},
            ValueError,
            "must be an instance of ParamScheduler",
        ),
        ({"multiplier": ConstantParamScheduler(1.0), "max_iter": 0}, ValueError, "max_iter"),
        ({"multiplier": ConstantParamScheduler(1.0), "max_iter": 10.0}, TypeError, "max_iter"),
        (
            {"multiplier": ConstantParamScheduler(1.0), "max_iter": 10, "last_iter": -2},
            ValueError,
            "last_iter",
        ),
    ],
)
def test_lr_multiplier_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        LRMultiplier(make_optimizer(1.0), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"warmup_method": "cosine"}, ValueError, r"warmup_method must be one of \['linear', 'constant'\]"),
        ({"warmup_length": 1.5}, ValueError, r"warmup_length must be in \[0, 1\]"),
        ({"warmup_factor": -0.1}, ValueError, "warmup_factor must be >= 0"),
        ({"scheduler": 1.0}, TypeError, "scheduler must be a ParamScheduler"),
    ],
)
def test_warmup_param_scheduler_validation(kwargs, error, match):
    args = {"scheduler": ConstantParamScheduler(1.0), "warmup_factor": 0.001, "warmup_length": 0.1}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        WarmupParamScheduler(**args)


def test_legacy_warmup_multistep_lr_matches_new_scheduler(caplog):
    optimizer = make_optimizer(5.0)
    with caplog.at_level(logging.WARNING):
        scheduler = WarmupMultiStepLR(optimizer, milestones=[10, 15, 20], gamma=0.1, warmup_iters=5)
    assert "WarmupMultiStepLR is deprecated" in caplog.text
    expected = [0.005, 1.004, 2.003, 3.002, 4.001] + [5.0] * 5 + [0.5] * 5 + [0.05] * 5 + [0.005] * 10
    assert lrs_used(optimizer, scheduler, 30) == pytest.approx(expected, rel=1e-9)


def test_legacy_warmup_cosine_lr():
    optimizer = make_optimizer(5.0)
    scheduler = WarmupCosineLR(optimizer, max_iters=30, warmup_iters=5, warmup_method="constant")
    lrs = lrs_used(optimizer, scheduler, 30)
    assert lrs[:5] == pytest.approx([0.005 * 0.5 * (1 + math.cos(math.pi * i / 30)) for i in range(5)])
    assert lrs[15] == pytest.approx(2.5)


def test_legacy_warmup_multistep_rejects_unsorted_milestones():
    with pytest.raises(ValueError, match="increasing"):
        WarmupMultiStepLR(make_optimizer(1.0), milestones=[20, 10])


def test_fvcore_param_schedulers_are_accepted():
    # A stand-in for fvcore.common.param_scheduler.ParamScheduler (fvcore is not a dependency).
    fvcore_base = type("ParamScheduler", (), {"__module__": "fvcore.common.param_scheduler"})
    half = type("Half", (fvcore_base,), {"__call__": lambda self, where: 0.5})()
    optimizer = make_optimizer(4.0)
    LRMultiplier(optimizer, WarmupParamScheduler(half, warmup_factor=0.25, warmup_length=0.5), max_iter=10)
    assert optimizer.param_groups[0]["lr"] == 0.5  # 4 * 0.25 * half(0)
    LRMultiplier(optimizer, half, max_iter=10)
    assert optimizer.param_groups[0]["lr"] == 2.0


@pytest.mark.parametrize(
    ("solver", "warning"),
    [
        (
            {"MAX_ITER": 100, "WARMUP_ITERS": 100, "STEPS": []},
            "SOLVER.MAX_ITER (100) <= SOLVER.WARMUP_ITERS (100): the learning rate warms up during the whole run and "
            "never reaches SOLVER.BASE_LR (0.001); lower SOLVER.WARMUP_ITERS (e.g. to 10) or raise SOLVER.MAX_ITER",
        ),
        (
            {"MAX_ITER": 600, "WARMUP_ITERS": 100, "STEPS": [50, 400]},
            "SOLVER.STEPS ([50, 400]) decays the learning rate before SOLVER.WARMUP_ITERS (100) ends: it never reaches "
            "SOLVER.BASE_LR (0.001); lower SOLVER.WARMUP_ITERS or move the decays later",
        ),
        (
            {"MAX_ITER": 600, "WARMUP_ITERS": 100, "LR_SCHEDULER_NAME": "WarmupStepWithFixedGammaLR", "NUM_DECAYS": 9},
            "SOLVER.NUM_DECAYS (9) decays the learning rate before SOLVER.WARMUP_ITERS (100) ends: it never reaches "
            "SOLVER.BASE_LR (0.001); lower SOLVER.WARMUP_ITERS or move the decays later",
        ),
        ({"MAX_ITER": 600, "WARMUP_ITERS": 100, "STEPS": [400]}, None),
        ({"MAX_ITER": 100, "WARMUP_ITERS": 100, "STEPS": [], "WARMUP_FACTOR": 1.0}, None),  # no warmup at all
        ({"MAX_ITER": 100, "WARMUP_ITERS": 0, "STEPS": []}, None),
        ({"MAX_ITER": 600, "WARMUP_ITERS": 100, "LR_SCHEDULER_NAME": "WarmupCosineLR"}, None),  # decays by design
    ],
)
def test_a_schedule_that_never_reaches_base_lr_warns_once_naming_both_keys(solver, warning, caplog):
    with caplog.at_level(logging.WARNING, logger="d2lightning.solver.build"):
        build_lr_scheduler(solver_cfg(**solver), make_optimizer(0.001))
    assert [r.getMessage() for r in caplog.records if r.name == "d2lightning.solver.build"] == (
        [warning] if warning else []
    )

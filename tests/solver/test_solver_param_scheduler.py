"""Tests for d2lightning.solver.param_scheduler (fvcore's parameter schedulers, reimplemented)."""

import pytest
from omegaconf import OmegaConf

from d2lightning.solver import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    CosineParamScheduler,
    ExponentialParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
    PolynomialDecayParamScheduler,
    StepParamScheduler,
    StepWithFixedGammaParamScheduler,
)


def test_constant():
    sched = ConstantParamScheduler(0.42)
    assert [sched(w) for w in (0.0, 0.5, 1.0)] == [0.42, 0.42, 0.42]


@pytest.mark.parametrize(
    ("where", "expected"),
    [(0.0, 1.0), (0.25, 0.8535533905932737), (0.5, 0.5), (1.0, 0.0)],
)
def test_cosine(where, expected):
    assert CosineParamScheduler(1.0, 0.0)(where) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_cosine_keyword_names_match_fvcore():
    assert CosineParamScheduler(start_value=0.1, end_value=0.0001)(1.0) == pytest.approx(0.0001)


@pytest.mark.parametrize(("where", "expected"), [(0.0, 0.001), (0.5, 0.5005), (1.0, 1.0)])
def test_linear(where, expected):
    assert LinearParamScheduler(start_value=0.001, end_value=1.0)(where) == pytest.approx(expected)


def test_exponential_and_polynomial():
    assert ExponentialParamScheduler(start_value=2.0, decay=0.02)(0.5) == pytest.approx(0.282842712474619)
    assert PolynomialDecayParamScheduler(base_value=0.1, power=0.9)(0.5) == pytest.approx(0.05358867312681466)
    assert PolynomialDecayParamScheduler(base_value=0.1, power=0.9)(1.0) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_updates": 90, "milestones": [30, 60]},
        {"num_updates": 90},
        {"milestones": [30, 60, 90]},
    ],
)
def test_multistep_equivalent_forms(kwargs):
    sched = MultiStepParamScheduler(values=[1.0, 0.1, 0.01], **kwargs)
    values = [sched(i / 90) for i in (0, 29, 30, 59, 60, 89, 90)]
    assert values == [1.0, 1.0, 0.1, 0.1, 0.01, 0.01, 0.01]


def test_multistep_scale_invariant():
    sched = MultiStepParamScheduler(values=[1.0, 0.1, 0.01], milestones=[3, 6, 9])
    assert [sched(w) for w in (0.0, 2 / 9, 3 / 9, 6 / 9, 1.0)] == [1.0, 1.0, 0.1, 0.01, 0.01]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"values": [1.0, 0.1]}, "cannot both be None"),
        ({"values": [1.0, 0.1], "num_updates": 90, "milestones": [10, 20]}, "needs 1 milestones"),
        ({"values": [1.0, 0.1, 0.01], "num_updates": 90, "milestones": [60, 30]}, "strictly increasing"),
        ({"values": [1.0, 0.1], "num_updates": 90, "milestones": [90]}, "smaller than num_updates=90"),
        ({"values": [1.0, 0.1, 0.01], "num_updates": 2}, "at least the number of values"),
        ({"values": [], "num_updates": 10}, "non-empty"),
        ({"values": [1.0], "num_updates": 0}, "num_updates must be a positive integer"),
    ],
)
def test_multistep_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiStepParamScheduler(**kwargs)


def test_step_with_fixed_gamma():
    sched = StepWithFixedGammaParamScheduler(base_value=0.1, num_decays=3, gamma=0.1, num_updates=120)
    values = [sched(i / 120) for i in (0, 29, 30, 59, 60, 89, 90, 119)]
    assert values == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001], rel=1e-12)


def test_step_at_end_of_training_returns_last_value():
    # fvcore raises IndexError at where=1.0 (the scheduler step after the last iteration).
    assert StepParamScheduler(num_updates=4, values=[1.0, 0.5])(1.0) == 0.5
    sched = StepWithFixedGammaParamScheduler(base_value=1.0, num_decays=1, gamma=0.5, num_updates=4)
    assert sched(1.0) == 0.5


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"base_value": 0.0, "num_decays": 3, "gamma": 0.1, "num_updates": 9}, ValueError, "base_value"),
        ({"base_value": 1.0, "num_decays": 0, "gamma": 0.1, "num_updates": 9}, ValueError, "num_decays"),
        ({"base_value": 1.0, "num_decays": 3, "gamma": -0.1, "num_updates": 9}, ValueError, "gamma"),
        ({"base_value": 1.0, "num_decays": 3, "gamma": 0.1, "num_updates": 9.5}, TypeError, "num_updates"),
    ],
)
def test_step_with_fixed_gamma_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        StepWithFixedGammaParamScheduler(**kwargs)


def test_composite_rescaled():
    sched = CompositeParamScheduler(
        [ConstantParamScheduler(0.42), CosineParamScheduler(0.42, 1e-4)],
        lengths=[0.3, 0.7],
        interval_scaling=["rescaled", "rescaled"],
    )
    assert sched(0.1) == 0.42
    assert sched(0.3) == pytest.approx(0.42)  # a boundary belongs to the next segment
    assert sched(0.65) == pytest.approx(0.21005)
    assert sched(1.0) == pytest.approx(1e-4)


def test_composite_fixed_sees_global_where():
    sched = CompositeParamScheduler(
        [ConstantParamScheduler(2.0), LinearParamScheduler(0.0, 1.0)],
        lengths=[0.2, 0.8],
        interval_scaling=["rescaled", "fixed"],
    )
    assert [sched(0.1), sched(0.5), sched(1.0)] == pytest.approx([2.0, 0.5, 1.0])


def test_composite_fixes_lengths_without_mutating_input():
    lengths = [0.3, 0.6999]
    CompositeParamScheduler(
        [ConstantParamScheduler(1.0), ConstantParamScheduler(2.0)], lengths, ["rescaled", "rescaled"]
    )
    assert lengths == [0.3, 0.6999]


def test_composite_zero_length_rescaled_last_segment():
    # fvcore divides by zero here; we evaluate the empty segment at its start.
    sched = CompositeParamScheduler(
        [LinearParamScheduler(0.0, 1.0), MultiStepParamScheduler([3.0, 4.0], num_updates=10)],
        lengths=[1.0, 0.0],
        interval_scaling=["rescaled", "rescaled"],
    )
    assert sched(0.5) == 0.5
    assert sched(1.0) == 3.0


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (([], [], []), ValueError, "at least one scheduler"),
        (([ConstantParamScheduler(1.0)], [0.5, 0.5], ["fixed"]), ValueError, "same length"),
        (([ConstantParamScheduler(1.0)], [0.9], ["fixed"]), ValueError, "sum of all values"),
        (([ConstantParamScheduler(1.0)], [1.0], ["scaled"]), ValueError, "interval_scaling\\[0\\]"),
        (([lambda w: w], [1.0], ["fixed"]), TypeError, "schedulers\\[0\\]"),
    ],
)
def test_composite_validation(args, error, match):
    with pytest.raises(error, match=match):
        CompositeParamScheduler(*args)


@pytest.mark.parametrize("where", [-0.1, 1.01])
def test_where_outside_unit_interval_raises(where):
    with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
        ConstantParamScheduler(1.0)(where)


def test_where_must_be_a_number():
    with pytest.raises(TypeError, match="where must be a real number"):
        CosineParamScheduler(1.0, 0.0)("0.5")


def test_constructor_numbers_are_checked():
    with pytest.raises(TypeError, match="start_value must be a finite real number"):
        LinearParamScheduler(float("nan"), 1.0)
    with pytest.raises(TypeError, match="value must be a finite real number"):
        ConstantParamScheduler(True)


def test_base_class_must_be_subclassed():
    with pytest.raises(NotImplementedError):
        ParamScheduler()(0.5)


def test_fvcore_style_subclass_overriding_call_works_in_composite():
    class Half(ParamScheduler):
        def __call__(self, where: float) -> float:
            return 0.5

    sched = CompositeParamScheduler(
        [ConstantParamScheduler(1.0), Half()], lengths=[0.5, 0.5], interval_scaling=["fixed", "fixed"]
    )
    assert [sched(0.2), sched(0.7)] == [1.0, 0.5]


def test_multistep_accepts_omegaconf_lists_as_in_lazy_configs():
    node = OmegaConf.create({"values": [1.0, 0.1, 0.01], "milestones": [60000, 80000, 90000]})
    sched = MultiStepParamScheduler(values=node["values"], milestones=node["milestones"])
    assert [sched(w) for w in (0.0, 60000 / 90000, 80000 / 90000)] == [1.0, 0.1, 0.01]

"""Tests for command-line overrides: yacs ``KEY VALUE`` pairs and LazyConfig ``a.b=c`` items."""

from __future__ import annotations

import pytest

from d2lightning.config import (
    ConfigError,
    ConfigTypeError,
    FrozenConfigError,
    UnknownKeyError,
    apply_overrides,
    get_cfg,
    parse_overrides,
)


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        # yacs literal_eval rules
        ("SOLVER.BASE_LR", "0.01", 0.01),
        ("SOLVER.BASE_LR", "1", 1.0),
        ("SOLVER.MAX_ITER", "270000", 270000),
        ("SOLVER.STEPS", "(12, 18)", (12, 18)),
        ("SOLVER.STEPS", "[12, 18]", (12, 18)),
        ("MODEL.PIXEL_STD", "(57.375, 57.12, 58.395)", [57.375, 57.12, 58.395]),
        ("SOLVER.AMP.ENABLED", "True", True),
        ("MODEL.DEVICE", "cpu", "cpu"),
        ("MODEL.WEIGHTS", "/path/to/model_final.pth", "/path/to/model_final.pth"),
        ("MODEL.WEIGHTS", "'quoted'", "quoted"),
        ("OUTPUT_DIR", "123", "123"),  # kept as a string: the key takes str
        ("DATASETS.TRAIN", "('a', 'b')", ("a", "b")),
        ("SOLVER.WEIGHT_DECAY_BIAS", "None", None),
        ("SOLVER.WEIGHT_DECAY_BIAS", "0", 0.0),
        ("LIGHTNING.DEVICES", "2", 2),
        ("LIGHTNING.DEVICES", "[0, 1]", [0, 1]),
        ("LIGHTNING.DEVICES", "0,1", [0, 1]),  # literal_eval gives (0, 1)
        ("LIGHTNING.PRECISION", "16", 16),
        ("LIGHTNING.PRECISION", "bf16-mixed", "bf16-mixed"),
        ("SOLVER.OPTIMIZER", "AdamW", "ADAMW"),
    ],
)
def test_pair_values_are_read_like_yacs(key, raw, expected):
    cfg = get_cfg()
    cfg.merge_from_list([key, raw])
    node = cfg
    for part in key.split("."):
        node = node[part]
    assert node == expected
    assert type(node) is type(expected)


@pytest.mark.parametrize(
    ("item", "key", "expected"),
    [
        ("SOLVER.BASE_LR=0.01", "SOLVER.BASE_LR", 0.01),
        ("SOLVER.STEPS=(12, 18)", "SOLVER.STEPS", (12, 18)),
        ("LIGHTNING.PROGRESS_BAR=false", "LIGHTNING.PROGRESS_BAR", False),
        ("LIGHTNING.PROGRESS_BAR=True", "LIGHTNING.PROGRESS_BAR", True),
        ("SOLVER.WEIGHT_DECAY_BIAS=null", "SOLVER.WEIGHT_DECAY_BIAS", None),
        ("MODEL.WEIGHTS=a=b.pth", "MODEL.WEIGHTS", "a=b.pth"),
        ("MODEL.DEVICE=true", "MODEL.DEVICE", "true"),  # a str key keeps the word
    ],
)
def test_assignment_items_are_read_like_lazyconfig(item, key, expected):
    cfg = apply_overrides(get_cfg(), [item])
    node = cfg
    for part in key.split("."):
        node = node[part]
    assert node == expected
    assert type(node) is type(expected)


def test_both_forms_mixed_in_one_list():
    cfg = get_cfg()
    out = apply_overrides(cfg, ["MODEL.WEIGHTS", "w.pth", "SOLVER.IMS_PER_BATCH=8", "OUTPUT_DIR", "x=y", "SEED=1"])
    assert out is cfg
    assert (cfg.MODEL.WEIGHTS, cfg.SOLVER.IMS_PER_BATCH, cfg.OUTPUT_DIR, cfg.SEED) == ("w.pth", 8, "x=y", 1)


def test_parse_overrides_detects_the_form_per_item():
    assert parse_overrides(["A.B", "1", "C.D=2", "E", "F=G", "H=I"]) == [
        ("A.B", "1", False),
        ("C.D", "2", True),
        ("E", "F=G", False),
        ("H", "I", True),
    ]
    assert parse_overrides([]) == []


def test_key_without_value_is_an_error():
    with pytest.raises(ConfigError, match=r"Override 'SOLVER.MAX_ITER' has no value"):
        apply_overrides(get_cfg(), ["SOLVER.BASE_LR=0.1", "SOLVER.MAX_ITER"])
    with pytest.raises(ConfigError, match=r"merge_from_list expects a list of KEY, VALUE pairs"):
        get_cfg().merge_from_list(["SOLVER.MAX_ITER"])


@pytest.mark.parametrize(
    ("opts", "expected"),
    [
        (
            ["SOLVER.BASE_RL", "0.1"],
            "Unknown config key 'SOLVER.BASE_RL' (in override 'SOLVER.BASE_RL 0.1'). Did you mean 'SOLVER.BASE_LR'?",
        ),
        (
            ["solver.base_lr=0.1"],
            "Unknown config key 'solver.base_lr' (in override 'solver.base_lr=0.1'). Did you mean 'SOLVER.BASE_LR'?",
        ),
        (
            ["SOLVER.BASE_LR.X", "1"],
            "Unknown config key 'SOLVER.BASE_LR.X' (in override 'SOLVER.BASE_LR.X 1'). Did you mean 'SOLVER.BASE_LR'?",
        ),
    ],
)
def test_unknown_override_key_suggests_the_closest(opts, expected):
    with pytest.raises(UnknownKeyError) as info:
        apply_overrides(get_cfg(), opts)
    assert str(info.value) == expected


def test_wrong_override_value_names_key_override_and_type():
    with pytest.raises(ConfigTypeError) as info:
        apply_overrides(get_cfg(), ["SOLVER.MAX_ITER=ten"])
    assert (
        str(info.value)
        == "Config key 'SOLVER.MAX_ITER' (in override 'SOLVER.MAX_ITER=ten') expects int, got str 'ten'."
    )


def test_overrides_are_all_or_nothing():
    cfg = get_cfg()
    with pytest.raises(ConfigTypeError):
        apply_overrides(cfg, ["SOLVER.BASE_LR", "0.5", "SOLVER.MAX_ITER", "x"])
    assert cfg.SOLVER.BASE_LR == 0.001


def test_overrides_on_frozen_cfg_and_bad_arguments():
    cfg = get_cfg()
    cfg.freeze()
    with pytest.raises(FrozenConfigError, match="'SEED'"):
        apply_overrides(cfg, ["SEED=1"])
    with pytest.raises(TypeError, match="opts must be a list of strings"):
        apply_overrides(get_cfg(), "SEED=1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cfg must be a d2lightning CfgNode, got dict"):
        apply_overrides({}, ["SEED=1"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'_BASE_' is only allowed in files"):
        apply_overrides(get_cfg(), ["_BASE_", "x.yaml"])

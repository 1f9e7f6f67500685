"""Tests for the default-key registry (``extend_defaults``) and the validated ``LIGHTNING``/solver keys."""

from __future__ import annotations

import copy
import typing

import pytest

from d2lightning.config import (
    ConfigError,
    ConfigTypeError,
    KeySpec,
    UnknownKeyError,
    extend_defaults,
    extend_defaults_from_cfgnode,
    get_cfg,
    schema,
    validators,
)


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch):
    """Each test extends a private copy of the registry."""
    monkeypatch.setattr(schema, "_TREE", copy.deepcopy(schema._TREE))


def test_extend_defaults_adds_validated_keys_to_later_get_cfg(tmp_path):
    before = get_cfg()
    extend_defaults({"MODEL": {"SHAPES": {"NUM_CLASSES": 3, "CHANNELS": (16, 32)}}}, source="ShapesNet")
    cfg = get_cfg()
    assert cfg.MODEL.SHAPES.NUM_CLASSES == 3
    assert cfg.MODEL.SHAPES.CHANNELS == (16, 32)
    assert cfg.MODEL.WEIGHTS == ""  # the rest of MODEL is kept
    assert "SHAPES" not in before.MODEL  # an existing cfg is a copy made earlier
    path = tmp_path / "shapes.yaml"
    path.write_text("MODEL:\n  SHAPES:\n    NUM_CLASSES: 5\n    NUM_CLASES: 5\n")
    with pytest.raises(UnknownKeyError, match=r"Did you mean 'MODEL.SHAPES.NUM_CLASSES'"):
        cfg.merge_from_file(str(path))
    with pytest.raises(ConfigTypeError, match=r"'MODEL.SHAPES.NUM_CLASSES' .* expects int, got str 'three'"):
        cfg.merge_from_list(["MODEL.SHAPES.NUM_CLASSES", "three"])


def test_redefining_with_same_default_is_a_no_op():
    extend_defaults({"MODEL": {"SHAPES": {"SIZES": [1, 2]}}}, source="a")
    extend_defaults({"MODEL": {"SHAPES": {"SIZES": (1, 2)}}, "SOLVER": {"BASE_LR": 0.001}}, source="b")
    assert get_cfg().MODEL.SHAPES.SIZES == [1, 2]


def test_conflicting_default_names_key_and_both_sources():
    with pytest.raises(ConfigError) as info:
        extend_defaults({"SOLVER": {"BASE_LR": 0.02}}, source="my_model")
    assert str(info.value) == (
        "Config key 'SOLVER.BASE_LR' is already defined by d2lightning.config.defaults with default 0.001; "
        "my_model redefines it as default 0.02. Use another key name, or the same default."
    )
    with pytest.raises(
        ConfigError, match=r"'SOLVER.MAX_ITER' is already defined by .* redefines it as default 40000.0"
    ):
        extend_defaults({"SOLVER": {"MAX_ITER": 40000.0}}, source="x")  # an int key redefined as float


def test_section_versus_value_conflicts():
    with pytest.raises(
        ConfigError,
        match=r"'SOLVER.AMP' is a section \(defined by d2lightning.config.defaults\); "
        r"m redefines it as a value with default True",
    ):
        extend_defaults({"SOLVER": {"AMP": True}}, source="m")
    with pytest.raises(ConfigError, match=r"'SEED' is already defined by d2lightning.config.defaults .* as a section"):
        extend_defaults({"SEED": {"VALUE": 1}}, source="m")


def test_extend_defaults_is_all_or_nothing():
    with pytest.raises(ConfigError):
        extend_defaults({"MODEL": {"NEW_KEY": 1}, "SOLVER": {"BASE_LR": 9.0}}, source="m")
    assert "NEW_KEY" not in get_cfg().MODEL


@pytest.mark.parametrize(
    ("defaults", "source", "error", "match"),
    [
        ({"MODEL": {"X": 1}}, "", ValueError, "source must be a non-empty string"),
        ([("MODEL", 1)], "m", TypeError, "defaults must be a nested mapping"),
        ({"MODEL.X": 1}, "m", TypeError, "config keys must be non-empty strings without '.'"),
        ({"MODEL": {"X": object()}}, "m", TypeError, "default of config key 'MODEL.X' must be"),
        ({"MODEL": {"X": KeySpec("a", types=(int,))}}, "m", TypeError, "its KeySpec accepts int"),
    ],
)
def test_extend_defaults_argument_errors(defaults, source, error, match):
    with pytest.raises(error, match=match):
        extend_defaults(defaults, source=source)


def test_keyspec_types_and_validator_apply_to_the_new_key():
    def positive(value):
        if value is not None and value <= 0:
            raise ValueError("must be > 0")
        return value

    extend_defaults(
        {
            "MODEL": {
                "HEAD": {
                    "NUM_CLASSES": KeySpec(3, validator=positive),
                    "SIZE": KeySpec("s", types=(str, int)),
                }
            }
        },
        source="m",
    )
    cfg = get_cfg()
    cfg.MODEL.HEAD.SIZE = 5
    assert cfg.MODEL.HEAD.SIZE == 5
    with pytest.raises(ConfigTypeError) as info:
        cfg.merge_from_list(["MODEL.HEAD.NUM_CLASSES", "0"])
    assert str(info.value) == (
        "Invalid value 0 for config key 'MODEL.HEAD.NUM_CLASSES' (in override 'MODEL.HEAD.NUM_CLASSES 0'): must be > 0"
    )


def test_extend_defaults_from_a_detectron2_like_tree():
    # A nested dict standing in for detectron2.config.get_cfg(): shared keys with equal defaults
    # (tuples vs lists are equal) plus architecture keys d2lightning does not define.
    d2_like = {
        "VERSION": 2,
        "MODEL": {
            "META_ARCHITECTURE": "GeneralizedRCNN",
            "PIXEL_MEAN": (103.53, 116.28, 123.675),
            "BACKBONE": {"NAME": "build_resnet_backbone", "FREEZE_AT": 2},
            "ROI_HEADS": {"NUM_CLASSES": 80, "IN_FEATURES": ["res4"]},
        },
        "SOLVER": {"BASE_LR": 0.001, "STEPS": [30000]},
    }
    extend_defaults_from_cfgnode(d2_like)
    cfg = get_cfg()
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 2
    assert cfg.MODEL.ROI_HEADS.IN_FEATURES == ["res4"]
    cfg.merge_from_list(["MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3
    with pytest.raises(ConfigError, match="already defined by detectron2 with default 80; shapes redefines"):
        extend_defaults({"MODEL": {"ROI_HEADS": {"NUM_CLASSES": 3}}}, source="shapes")


def test_extend_defaults_from_cfgnode_conflict_modes():
    older = {"SOLVER": {"BASE_LR": 0.02, "NEW_D2_KEY": 1}}
    with pytest.raises(ConfigError, match=r"'SOLVER.BASE_LR' is already defined"):
        extend_defaults_from_cfgnode(older, source="detectron2 v0.5")
    extend_defaults_from_cfgnode(older, source="detectron2 v0.5", on_conflict="keep")
    cfg = get_cfg()
    assert cfg.SOLVER.BASE_LR == 0.001 and cfg.SOLVER.NEW_D2_KEY == 1
    with pytest.raises(ValueError, match="on_conflict must be 'error' or 'keep', got 'ignore'"):
        extend_defaults_from_cfgnode(older, on_conflict="ignore")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "good", "bad", "message"),
    [
        (
            "LIGHTNING.PRECISION",
            ["16-mixed", "bf16-mixed", "32", 16, "transformer-engine"],
            ["17-mixed", 8],
            "expected one of ['transformer-engine'",
        ),
        (
            "LIGHTNING.ACCELERATOR",
            ["auto", "cpu", "gpu", "cuda"],
            ["GPU", "quantum"],
            "expected one of ['auto', 'gpu'",
        ),
        (
            "LIGHTNING.STRATEGY",
            ["auto", "ddp", "fsdp", "DDP"],
            ["dpp"],
            "expected 'auto' or a registered Lightning",
        ),
        (
            "LIGHTNING.DEVICES",
            ["auto", 1, -1, [0, 1], "0,1", "-1", "3"],
            [-2, [], [-1], "gpu", 1.5, [True]],
            "expected 'auto', an int >= -1",
        ),
        ("LIGHTNING.NUM_NODES", [1, 4], [0, -1, None], "expected an int >= 1"),
        ("LIGHTNING.ACCUMULATE_GRAD_BATCHES", [1, 8], [0], "expected an int >= 1"),
        ("LIGHTNING.LOG_EVERY_N_STEPS", [1, 50], [0], "expected an int >= 1"),
        ("LIGHTNING.DETERMINISTIC", [True, False, "warn"], ["yes"], "expected True, False or 'warn'"),
        ("LIGHTNING.EMA.DECAY", [0.0, 0.999, 1], [1.5, -0.1], "expected a float in [0, 1]"),
        (
            "LIGHTNING.LOGGERS",
            [
                ["lightning.pytorch.loggers.CSVLogger"],
                [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"name": "x"}}],
                [],
            ],
            [
                ["CSVLogger"],
                [{"init_args": {}}],
                [{"class_path": "a.B", "args": {}}],
                [3],
                [{"class_path": "a.B", "init_args": 1}],
            ],
            "entry [0]",
        ),
        ("LIGHTNING.CALLBACKS", [["my.callbacks.Hook"]], [["not a path"]], "class path must look like"),
        (
            "SOLVER.OPTIMIZER",
            ["SGD", "ADAMW", "adamw"],
            ["Adam", "LBFGS"],
            "expected one of ['SGD', 'ADAMW']",
        ),
        ("SOLVER.CHECKPOINT_MAX_TO_KEEP", [0, 3], [-1], "expected an int >= 0"),
        ("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", ["value", "norm"], ["full_model", "Norm"], "expected one of"),
        (
            "SOLVER.WARMUP_METHOD",
            ["linear", "constant"],
            ["cosine"],
            "expected one of ['linear', 'constant']",
        ),
        ("FLOAT32_PRECISION", ["", "highest", "high", "medium"], ["low"], "expected one of"),
    ],
)
def test_fixed_domain_keys_are_validated(key, good, bad, message):
    section, leaf = key.rsplit(".", 1) if "." in key else ("", key)
    for value in good:
        cfg = get_cfg()
        node = cfg
        for part in filter(None, section.split(".")):
            node = node[part]
        node[leaf] = value
    for value in bad:
        cfg = get_cfg()
        with pytest.raises(ConfigTypeError) as info:
            cfg.merge_from_list([key, repr(value)])
        assert key in str(info.value) and message in str(info.value)


def test_type_errors_come_before_domain_checks():
    with pytest.raises(ConfigTypeError, match=r"'LIGHTNING.NUM_NODES' .* expects int, got str 'two'"):
        get_cfg().merge_from_list(["LIGHTNING.NUM_NODES", "two"])
    with pytest.raises(ConfigTypeError, match=r"'LIGHTNING.PROGRESS_BAR' .* expects bool, got str 'yes'"):
        get_cfg().merge_from_list(["LIGHTNING.PROGRESS_BAR", "yes"])


def test_precision_list_matches_lightning():
    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT

    accepted = set()
    for literal in typing.get_args(_PRECISION_INPUT):
        accepted.update(typing.get_args(literal))
    assert set(validators.LIGHTNING_PRECISIONS) == accepted

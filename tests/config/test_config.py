"""Tests for ``d2lightning.config.CfgNode`` and ``get_cfg`` (detectron2 ``detectron2.config`` semantics)."""

from __future__ import annotations

import copy
import pickle

import pytest
from omegaconf import DictConfig, OmegaConf

from d2lightning.config import (
    CfgNode,
    ConfigError,
    ConfigTypeError,
    FrozenConfigError,
    UnknownKeyError,
    get_cfg,
    global_cfg,
    set_global_cfg,
)

# detectron2 HEAD defaults (reference spec §5.7 and detectron2/config/defaults.py).
D2_DEFAULTS = {
    "VERSION": 2,
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.WEIGHTS": "",
    "MODEL.DEVICE": "cuda",
    "MODEL.PIXEL_MEAN": [103.530, 116.280, 123.675],
    "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
    "MODEL.MASK_ON": False,
    "MODEL.LOAD_PROPOSALS": False,
    "INPUT.MIN_SIZE_TRAIN": (800,),
    "INPUT.MAX_SIZE_TRAIN": 1333,
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice",
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333,
    "INPUT.FORMAT": "BGR",
    "INPUT.RANDOM_FLIP": "horizontal",
    "DATASETS.TRAIN": (),
    "DATASETS.TEST": (),
    "DATALOADER.NUM_WORKERS": 4,
    "DATALOADER.ASPECT_RATIO_GROUPING": True,
    "DATALOADER.SAMPLER_TRAIN": "TrainingSampler",
    "DATALOADER.REPEAT_THRESHOLD": 0.0,
    "DATALOADER.FILTER_EMPTY_ANNOTATIONS": True,
    "SOLVER.LR_SCHEDULER_NAME": "WarmupMultiStepLR",
    "SOLVER.MAX_ITER": 40000,
    "SOLVER.BASE_LR": 0.001,
    "SOLVER.BASE_LR_END": 0.0,
    "SOLVER.GAMMA": 0.1,
    "SOLVER.STEPS": (30000,),
    "SOLVER.NUM_DECAYS": 3,
    "SOLVER.WARMUP_FACTOR": 0.001,
    "SOLVER.WARMUP_ITERS": 1000,
    "SOLVER.WARMUP_METHOD": "linear",
    "SOLVER.RESCALE_INTERVAL": False,
    "SOLVER.MOMENTUM": 0.9,
    "SOLVER.NESTEROV": False,
    "SOLVER.WEIGHT_DECAY": 0.0001,
    "SOLVER.WEIGHT_DECAY_NORM": 0.0,
    "SOLVER.BIAS_LR_FACTOR": 1.0,
    "SOLVER.WEIGHT_DECAY_BIAS": None,
    "SOLVER.CHECKPOINT_PERIOD": 5000,
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.REFERENCE_WORLD_SIZE": 0,
    "SOLVER.CLIP_GRADIENTS.ENABLED": False,
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "value",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 1.0,
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE": 2.0,
    "SOLVER.AMP.ENABLED": False,
    "TEST.EVAL_PERIOD": 0,
    "TEST.EXPECTED_RESULTS": [],
    "TEST.DETECTIONS_PER_IMAGE": 100,
    "TEST.AUG.ENABLED": False,
    "TEST.AUG.MIN_SIZES": (400, 500, 600, 700, 800, 900, 1000, 1100, 1200),
    "TEST.AUG.MAX_SIZE": 4000,
    "TEST.AUG.FLIP": True,
    "TEST.PRECISE_BN.ENABLED": False,
    "TEST.PRECISE_BN.NUM_ITER": 200,
    "OUTPUT_DIR": "./output",
    "SEED": -1,
    "CUDNN_BENCHMARK": False,
    "FLOAT32_PRECISION": "",
    "VIS_PERIOD": 0,
}
D2L_DEFAULTS = {
    "SOLVER.OPTIMIZER": "SGD",
    "SOLVER.CHECKPOINT_MAX_TO_KEEP": 0,
    "LIGHTNING.PRECISION": "32-true",
    "LIGHTNING.ACCELERATOR": "auto",
    "LIGHTNING.DEVICES": "auto",
    "LIGHTNING.NUM_NODES": 1,
    "LIGHTNING.STRATEGY": "auto",
    "LIGHTNING.ACCUMULATE_GRAD_BATCHES": 1,
    "LIGHTNING.LOGGERS": [],
    "LIGHTNING.CALLBACKS": [],
    "LIGHTNING.EMA.ENABLED": False,
    "LIGHTNING.EMA.DECAY": 0.999,
    "LIGHTNING.PROGRESS_BAR": True,
    "LIGHTNING.LOG_EVERY_N_STEPS": 20,
    "LIGHTNING.DETERMINISTIC": False,
}


def _get(cfg: CfgNode, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize(("key", "expected"), sorted({**D2_DEFAULTS, **D2L_DEFAULTS}.items()))
def test_get_cfg_defaults(key, expected):
    value = _get(get_cfg(), key)
    assert value == expected
    assert type(value) is type(expected)  # tuples stay tuples, lists stay lists, floats stay floats


def test_get_cfg_returns_independent_copies():
    a, b = get_cfg(), get_cfg()
    a.SOLVER.BASE_LR = 0.5
    a.MODEL.PIXEL_MEAN.append(1.0)
    assert b.SOLVER.BASE_LR == 0.001
    assert b.MODEL.PIXEL_MEAN == [103.530, 116.280, 123.675]
    assert get_cfg().SOLVER.BASE_LR == 0.001


def test_attribute_and_item_access_are_the_same_dict():
    cfg = get_cfg()
    assert isinstance(cfg, dict)
    assert cfg["SOLVER"] is cfg.SOLVER
    assert cfg.SOLVER["BASE_LR"] == cfg.SOLVER.BASE_LR == 0.001
    assert cfg.get("SEED") == -1
    assert cfg.get("NOPE", 7) == 7
    assert "SOLVER" in cfg and "NOPE" not in cfg
    assert list(cfg.TEST.PRECISE_BN) == ["ENABLED", "NUM_ITER"]
    assert set(cfg.SOLVER.AMP.items()) == {("ENABLED", False)}


def test_assignment_converts_like_yacs():
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 1  # int where a float is expected: converted
    assert cfg.SOLVER.BASE_LR == 1.0 and type(cfg.SOLVER.BASE_LR) is float
    cfg.SOLVER.STEPS = [100, 200]  # list for a tuple key: converted to the key's kind
    assert cfg.SOLVER.STEPS == (100, 200)
    cfg.MODEL.PIXEL_MEAN = (1.0, 2.0, 3.0)
    assert cfg.MODEL.PIXEL_MEAN == [1.0, 2.0, 3.0]
    cfg.SOLVER.WEIGHT_DECAY_BIAS = 0  # None default, declared float
    assert cfg.SOLVER.WEIGHT_DECAY_BIAS == 0.0 and type(cfg.SOLVER.WEIGHT_DECAY_BIAS) is float
    cfg.MODEL.WEIGHTS = None  # None is accepted for any key, as in yacs
    assert cfg.MODEL.WEIGHTS is None


@pytest.mark.parametrize(
    ("key", "value", "expected_text"),
    [
        ("MAX_ITER", "1000", "Config key 'SOLVER.MAX_ITER' expects int, got str '1000'."),
        ("MAX_ITER", 1000.0, "Config key 'SOLVER.MAX_ITER' expects int, got float 1000.0."),
        ("BASE_LR", [0.1], "Config key 'SOLVER.BASE_LR' expects float, got list [0.1]."),
        ("NESTEROV", 1, "Config key 'SOLVER.NESTEROV' expects bool, got int 1."),
        ("MAX_ITER", True, "Config key 'SOLVER.MAX_ITER' expects int, got bool True."),
        ("STEPS", 30000, "Config key 'SOLVER.STEPS' expects tuple, got int 30000."),
        ("AMP", 3, "Config key 'SOLVER.AMP' is a section; set its keys (e.g. SOLVER.AMP.<KEY>), got int 3."),
    ],
)
def test_assignment_of_wrong_type_raises_naming_key_type_and_value(key, value, expected_text):
    cfg = get_cfg()
    with pytest.raises(ConfigTypeError) as info:
        cfg.SOLVER[key] = value
    assert str(info.value) == expected_text
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


def test_reading_an_unknown_key_raises_attribute_error_with_suggestion():
    cfg = get_cfg()
    with pytest.raises(UnknownKeyError, match=r"Unknown config key 'SOLVER.BASE_RL'. Did you mean 'SOLVER.BASE_LR'\?"):
        _ = cfg.SOLVER.BASE_RL
    assert not hasattr(cfg, "NOPE")
    assert getattr(cfg.SOLVER, "NOPE", "fallback") == "fallback"
    with pytest.raises(KeyError):
        _ = cfg["NOPE"]


def test_new_keys_can_be_added_by_assignment_like_add_config_functions():
    # detectron2 projects extend the config this way (e.g. add_deeplab_config(cfg)).
    cfg = get_cfg()
    cfg.MODEL.DEEPLAB = CfgNode()
    cfg.MODEL.DEEPLAB.ASPP_CHANNELS = 256
    cfg.MODEL.DEEPLAB.ASPP_DILATIONS = [6, 12, 18]
    cfg.merge_from_list(["MODEL.DEEPLAB.ASPP_CHANNELS", "128"])
    assert cfg.MODEL.DEEPLAB.ASPP_CHANNELS == 128
    with pytest.raises(ConfigTypeError, match=r"'MODEL.DEEPLAB.ASPP_CHANNELS' .* expects int, got str 'wide'"):
        cfg.merge_from_list(["MODEL.DEEPLAB.ASPP_CHANNELS", "wide"])


def test_frozen_cfg_refuses_every_change_naming_the_key():
    cfg = get_cfg()
    cfg.freeze()
    assert cfg.is_frozen() and cfg.SOLVER.AMP.is_frozen()
    expected = "Cannot change config key 'SOLVER.BASE_LR': the config is frozen; call cfg.defrost() first."
    with pytest.raises(FrozenConfigError) as info:
        cfg.SOLVER.BASE_LR = 0.1
    assert str(info.value) == expected
    assert isinstance(info.value, AttributeError)  # what yacs raises
    with pytest.raises(FrozenConfigError, match=r"'SOLVER.BASE_LR'"):
        cfg.SOLVER["BASE_LR"] = 0.1
    with pytest.raises(FrozenConfigError, match=r"'SOLVER.BASE_LR'"):
        cfg.merge_from_list(["SOLVER.BASE_LR", "0.1"])
    with pytest.raises(FrozenConfigError, match=r"'MODEL.NEW'"):
        cfg.MODEL.NEW = 1
    with pytest.raises(FrozenConfigError):
        del cfg.SOLVER["BASE_LR"]
    assert cfg.SOLVER.BASE_LR == 0.001
    cfg.defrost()
    cfg.SOLVER.BASE_LR = 0.1
    assert cfg.SOLVER.BASE_LR == 0.1 and not cfg.SOLVER.is_frozen()


def test_computed_keys_are_insert_only_even_when_frozen():
    cfg = get_cfg()
    cfg.freeze()
    cfg.COMPUTED_NUM = 3
    cfg.COMPUTED_NUM = 3
    assert cfg.COMPUTED_NUM == 3
    with pytest.raises(ConfigError, match="'COMPUTED_NUM' is already 3, not 4"):
        cfg.COMPUTED_NUM = 4


def test_clone_is_deep_and_keeps_state():
    cfg = get_cfg()
    cfg.freeze()
    other = cfg.clone()
    assert other == cfg and other is not cfg and other.SOLVER is not cfg.SOLVER
    assert other.is_frozen() and other.SOLVER.is_frozen()
    other.defrost()
    other.SOLVER.STEPS = (1, 2)
    other.MODEL.PIXEL_STD.append(9.0)
    assert cfg.SOLVER.STEPS == (30000,)
    assert cfg.MODEL.PIXEL_STD == [1.0, 1.0, 1.0]
    # The clone keeps the registry checks.
    with pytest.raises(ConfigTypeError, match=r"LIGHTNING.PRECISION"):
        other.LIGHTNING.PRECISION = "17-mixed"
    sub = cfg.SOLVER.clone()
    sub.defrost()
    with pytest.raises(ConfigTypeError, match=r"'SOLVER.MAX_ITER' expects int"):
        sub.MAX_ITER = "x"


def test_pickle_and_copy_round_trip():
    cfg = get_cfg()
    cfg.SOLVER.STEPS = (5, 6)
    cfg.freeze()
    for other in (pickle.loads(pickle.dumps(cfg)), copy.deepcopy(cfg), copy.copy(cfg)):
        assert other == cfg
        assert type(other) is CfgNode and type(other.SOLVER) is CfgNode
        assert other.is_frozen()
        assert other.SOLVER.STEPS == (5, 6)


def test_dump_is_yaml_that_merge_from_file_reads_back(tmp_path):
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.STEPS", "(12, 18)", "OUTPUT_DIR", "1e-4", "SOLVER.WEIGHT_DECAY_BIAS", "0.5"])
    cfg.LIGHTNING.LOGGERS = [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"name": "r"}}]
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = float("inf")
    text = cfg.dump()
    assert "BASE_LR: 0.001\n" in text
    assert "OUTPUT_DIR: '1e-4'\n" in text  # quoted, or it would read back as a float
    path = tmp_path / "dumped.yaml"
    path.write_text(text)
    reloaded = get_cfg()
    reloaded.merge_from_file(str(path))
    assert reloaded == cfg
    assert reloaded.SOLVER.STEPS == (12, 18) and reloaded.OUTPUT_DIR == "1e-4"


def test_to_dict_and_to_omegaconf():
    cfg = get_cfg()
    cfg.OUTPUT_DIR = "out/${not_interpolated}"
    plain = cfg.to_dict()
    assert type(plain) is dict and type(plain["SOLVER"]) is dict
    assert plain["SOLVER"]["STEPS"] == (30000,)
    plain["SOLVER"]["BASE_LR"] = 9.0
    assert cfg.SOLVER.BASE_LR == 0.001
    conf = cfg.to_omegaconf()
    assert isinstance(conf, DictConfig)
    assert conf.SOLVER.BASE_LR == 0.001
    assert list(conf.SOLVER.STEPS) == [30000]
    assert conf.OUTPUT_DIR == "out/${not_interpolated}"
    assert OmegaConf.is_struct(conf)


def test_merge_from_other_cfg_checks_keys_and_types():
    cfg = get_cfg()
    cfg.merge_from_other_cfg(CfgNode({"SOLVER": {"BASE_LR": 0.5, "STEPS": [1, 2]}}))
    assert cfg.SOLVER.BASE_LR == 0.5 and cfg.SOLVER.STEPS == (1, 2)
    with pytest.raises(UnknownKeyError, match=r"'SOLVER.BASE_RL' \(in the merged config\)"):
        cfg.merge_from_other_cfg({"SOLVER": {"BASE_RL": 0.5}})
    with pytest.raises(ConfigError, match="'_BASE_' is only allowed in files"):
        cfg.merge_from_other_cfg({"_BASE_": "x.yaml"})


def test_new_allowed_lets_merges_add_keys():
    cfg = CfgNode({"A": {"B": 1}}, new_allowed=True)
    cfg.merge_from_other_cfg({"A": {"C": "(1, 2)"}, "D": {"E": 2}})
    assert cfg.A.C == (1, 2) and cfg.D.E == 2 and cfg.D.is_new_allowed()
    strict = CfgNode({"A": {"B": 1}})
    with pytest.raises(UnknownKeyError, match=r"'A.C'"):
        strict.merge_from_other_cfg({"A": {"C": 1}})
    strict.set_new_allowed(True)
    strict.merge_from_other_cfg({"A": {"C": 1}})
    assert strict.A.C == 1


def test_plain_cfgnode_is_yacs_like():
    cfg = CfgNode({"FOO": {"BAR": 1, "L": [1, 2]}})
    assert cfg.FOO.BAR == 1 and cfg.FOO.L == [1, 2]
    cfg.FOO.BAR = 2
    with pytest.raises(ConfigTypeError, match=r"'FOO.BAR' expects int, got str 'x'"):
        cfg.FOO.BAR = "x"
    with pytest.raises(ConfigTypeError, match=r"'FOO.OBJ' expects a str, int, float, bool, None"):
        cfg.FOO.OBJ = object()
    assert repr(CfgNode({"A": 1})) == "CfgNode({'A': 1})"


def test_set_global_cfg_does_not_change_the_given_cfg():
    cfg = get_cfg()
    set_global_cfg(cfg)
    try:
        assert global_cfg.SOLVER.BASE_LR == 0.001
        # cfg's own sections still enforce the registry after being shared with global_cfg.
        with pytest.raises(ConfigTypeError, match=r"LIGHTNING.DEVICES"):
            cfg.LIGHTNING.DEVICES = "gpu0"
    finally:
        global_cfg.clear()

"""Tests for YAML config files: ``_BASE_`` chains, file errors, strict keys (``CfgNode.merge_from_file``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from d2lightning.config import ConfigError, ConfigFileError, ConfigTypeError, UnknownKeyError, get_cfg
from d2lightning.model_zoo import get_config_file


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


@pytest.fixture
def chain(tmp_path):
    """configs/base/root.yaml <- configs/mid/mid.yaml <- configs/exp/leaf.yaml (relative _BASE_ paths)."""
    _write(
        tmp_path / "configs/base/root.yaml",
        "VERSION: 2\nSOLVER:\n  BASE_LR: 0.02\n  MAX_ITER: 100\n  STEPS: (60, 80)\n"
        "INPUT:\n  MIN_SIZE_TRAIN: (640, 800)\n",
    )
    _write(tmp_path / "configs/mid/mid.yaml", '_BASE_: "../base/root.yaml"\nSOLVER:\n  MAX_ITER: 200\n')
    leaf = _write(
        tmp_path / "configs/exp/leaf.yaml",
        "_BASE_: ../mid/mid.yaml\nSOLVER:\n  IMS_PER_BATCH: 4\nOUTPUT_DIR: out/leaf\n",
    )
    return leaf


def test_three_level_base_chain_with_relative_paths(chain):
    cfg = get_cfg()
    cfg.merge_from_file(chain)
    assert cfg.SOLVER.BASE_LR == 0.02  # from root
    assert cfg.SOLVER.MAX_ITER == 200  # mid overrides root
    assert cfg.SOLVER.IMS_PER_BATCH == 4  # leaf
    assert cfg.SOLVER.STEPS == (60, 80)  # "(60, 80)" read as yacs does
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 800)
    assert cfg.OUTPUT_DIR == "out/leaf"
    assert cfg.SOLVER.GAMMA == 0.1  # untouched default


def test_merge_from_file_works_from_another_working_directory(chain, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "configs/base")
    cfg = get_cfg()
    cfg.merge_from_file(os.path.relpath(chain))
    assert cfg.SOLVER.MAX_ITER == 200


def test_base_list_merges_in_order(tmp_path):
    _write(tmp_path / "a.yaml", "SOLVER:\n  BASE_LR: 0.1\n  MAX_ITER: 10\n")
    _write(tmp_path / "b.yaml", "SOLVER:\n  BASE_LR: 0.2\n")
    top = _write(tmp_path / "top.yaml", "_BASE_: [a.yaml, b.yaml]\nSEED: 3\n")
    cfg = get_cfg()
    cfg.merge_from_file(top)
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER, cfg.SEED) == (0.2, 10, 3)


def test_base_cycle_is_an_error_showing_the_chain(tmp_path):
    a = _write(tmp_path / "a.yaml", "_BASE_: b.yaml\n")
    _write(tmp_path / "b.yaml", "_BASE_: c.yaml\n")
    _write(tmp_path / "c.yaml", "_BASE_: a.yaml\n")
    real = {n: os.path.realpath(tmp_path / n) for n in ("a.yaml", "b.yaml", "c.yaml")}
    with pytest.raises(ConfigFileError) as info:
        get_cfg().merge_from_file(a)
    assert str(info.value) == (
        f"_BASE_ cycle in config files: {real['a.yaml']} -> {real['b.yaml']} -> {real['c.yaml']} -> {real['a.yaml']}"
    )


def test_missing_file_names_the_path(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigFileError) as info:
        get_cfg().merge_from_file(missing)
    assert str(info.value) == f"Config file {missing!r} does not exist."
    assert info.value.path == missing


def test_missing_base_names_the_base_path(tmp_path):
    top = _write(tmp_path / "top.yaml", "_BASE_: sub/base.yaml\n")
    with pytest.raises(ConfigFileError, match=f"Config file '{tmp_path}/sub/base.yaml' does not exist."):
        get_cfg().merge_from_file(top)


@pytest.mark.parametrize(
    ("text", "message_start"),
    [
        ("SOLVER: [1\n", "Cannot parse config file"),
        ("SOLVER:\n  BASE_LR: 1\n  BASE_LR: 2\n", "Cannot parse config file"),
        ("- 1\n- 2\n", "must hold a mapping of config keys at the top level"),
        ("_BASE_: 3\n", "_BASE_ in"),
        ("_BASE_: https://example.com/base.yaml\n", "_BASE_ 'https://example.com/base.yaml' in"),
    ],
)
def test_bad_files_raise_config_file_error_naming_the_file(tmp_path, text, message_start):
    path = _write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigFileError) as info:
        get_cfg().merge_from_file(path)
    assert message_start in str(info.value)
    assert path in str(info.value)


def test_directory_and_python_files_are_refused(tmp_path):
    with pytest.raises(ConfigFileError, match="is not a file"):
        get_cfg().merge_from_file(str(tmp_path))
    py = _write(tmp_path / "lazy.py", "train = {}\n")
    with pytest.raises(ConfigFileError, match="is a Python \\(LazyConfig\\) file"):
        get_cfg().merge_from_file(py)


def test_unknown_key_names_key_file_and_suggestion(chain, tmp_path):
    bad = _write(tmp_path / "configs/exp/typo.yaml", "_BASE_: leaf.yaml\nSOLVER:\n  BASE_RL: 0.1\n")
    with pytest.raises(UnknownKeyError) as info:
        get_cfg().merge_from_file(bad)
    assert str(info.value) == (f"Unknown config key 'SOLVER.BASE_RL' (in file {bad!r}). Did you mean 'SOLVER.BASE_LR'?")
    assert info.value.key == "SOLVER.BASE_RL" and info.value.suggestion == "SOLVER.BASE_LR"
    assert isinstance(info.value, KeyError)  # what yacs raises


def test_unknown_key_in_a_base_names_the_base_file(tmp_path):
    base = _write(tmp_path / "base.yaml", "MODEL:\n  WIEGHTS: w.pth\n")
    top = _write(tmp_path / "top.yaml", "_BASE_: base.yaml\nSEED: 1\n")
    with pytest.raises(UnknownKeyError) as info:
        get_cfg().merge_from_file(top)
    assert str(info.value) == f"Unknown config key 'MODEL.WIEGHTS' (in file {base!r}). Did you mean 'MODEL.WEIGHTS'?"


def test_unknown_section_and_key_without_suggestion(tmp_path):
    path = _write(tmp_path / "x.yaml", "ZZZ_QQQ:\n  A: 1\n")
    with pytest.raises(UnknownKeyError) as info:
        get_cfg().merge_from_file(path)
    assert str(info.value).startswith(f"Unknown config key 'ZZZ_QQQ' (in file {path!r}). It is not defined")
    assert info.value.suggestion is None


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "SOLVER:\n  MAX_ITER: abc\n",
            "Config key 'SOLVER.MAX_ITER' (in file {f!r}) expects int, got str 'abc'.",
        ),
        (
            "SOLVER:\n  BASE_LR: [0.1]\n",
            "Config key 'SOLVER.BASE_LR' (in file {f!r}) expects float, got list [0.1].",
        ),
        (
            "SOLVER:\n  BASE_LR: {A: 1}\n",
            "Config key 'SOLVER.BASE_LR' (in file {f!r}) expects float, got a mapping {{'A': 1}}.",
        ),
        (
            "SOLVER: 3\n",
            "Config key 'SOLVER' (in file {f!r}) is a section; set its keys (e.g. SOLVER.<KEY>), got int 3.",
        ),
    ],
)
def test_wrong_types_name_key_file_expected_type_and_value(tmp_path, yaml_text, expected):
    path = _write(tmp_path / "types.yaml", yaml_text)
    with pytest.raises(ConfigTypeError) as info:
        get_cfg().merge_from_file(path)
    assert str(info.value) == expected.format(f=path)


def test_int_for_float_and_yacs_string_literals_are_accepted(tmp_path):
    path = _write(
        tmp_path / "ok.yaml",
        "SOLVER:\n  BASE_LR: 1\n  WEIGHT_DECAY: 1e-4\n  STEPS: [10, 20]\nDATASETS:\n"
        "  TRAIN: ('coco_2017_train',)\nMODEL:\n  WEIGHTS: detectron2://ImageNetPretrained/MSRA/R-50.pkl\n",
    )
    cfg = get_cfg()
    cfg.merge_from_file(path)
    assert cfg.SOLVER.BASE_LR == 1.0 and type(cfg.SOLVER.BASE_LR) is float
    assert cfg.SOLVER.WEIGHT_DECAY == 0.0001
    assert cfg.SOLVER.STEPS == (10, 20)
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",)
    assert cfg.MODEL.WEIGHTS == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"


def test_failed_merge_leaves_the_cfg_unchanged(tmp_path):
    path = _write(tmp_path / "half.yaml", "SEED: 5\nSOLVER:\n  BASE_LR: 0.5\n  MAX_ITER: oops\n")
    cfg = get_cfg()
    with pytest.raises(ConfigTypeError):
        cfg.merge_from_file(path)
    assert cfg == get_cfg()


def test_a_newer_version_is_refused(tmp_path):
    path = _write(tmp_path / "v3.yaml", "VERSION: 3\n")
    with pytest.raises(ConfigError) as info:
        get_cfg().merge_from_file(path)
    assert str(info.value) == f"Config file '{path}' has VERSION 3; this config reads VERSION 2 files and older ones."


def test_shipped_base_config_loads():
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("Base-D2Lightning"))
    assert cfg.SOLVER.STEPS == (60000, 80000)
    assert cfg.SOLVER.MAX_ITER == 90000
    assert cfg.SOLVER.BASE_LR == 0.02
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800)
    assert cfg.LIGHTNING.PRECISION == "32-true"


def test_load_yaml_with_base_returns_the_merged_dict(chain):
    tree = get_cfg().load_yaml_with_base(chain)
    assert tree == {
        "VERSION": 2,
        "SOLVER": {"BASE_LR": 0.02, "MAX_ITER": 200, "STEPS": "(60, 80)", "IMS_PER_BATCH": 4},
        "INPUT": {"MIN_SIZE_TRAIN": "(640, 800)"},
        "OUTPUT_DIR": "out/leaf",
    }


def test_python_tags_need_allow_unsafe_which_defaults_to_true_as_in_detectron2(tmp_path, caplog):
    # detectron2's Base-RetinaNet.yaml computes anchor sizes with !!python/object/apply:eval.
    path = _write(
        tmp_path / "retina.yaml",
        'SOLVER:\n  STEPS: !!python/object/apply:eval ["tuple(x * 1000 for x in (6, 8))"]\n',
    )
    cfg = get_cfg()
    cfg.merge_from_file(path)
    assert cfg.SOLVER.STEPS == (6000, 8000)
    assert "with yaml.unsafe_load" in caplog.text
    with pytest.raises(ConfigFileError, match="pass allow_unsafe=True to merge_from_file"):
        get_cfg().merge_from_file(path, allow_unsafe=False)


def test_unreadable_file_names_the_path(tmp_path, monkeypatch):
    path = _write(tmp_path / "locked.yaml", "SEED: 1\n")

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("d2lightning.config.loader.OmegaConf.load", deny)
    with pytest.raises(ConfigFileError) as info:
        get_cfg().merge_from_file(path)
    assert str(info.value) == f"Cannot read config file {path!r}: [Errno 13] Permission denied"

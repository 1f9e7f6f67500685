"""``upgrade_config`` / ``downgrade_config`` and older files (``d2lightning.config.compat``), as detectron2's.

The expected names are detectron2's renames (``detectron2/config/compat.py``); detectron2's own tests of them
(``tests/config/test_yacs_config.py``) run against d2lightning in ``tests/detectron2/test_detectron2_config_tests.py``.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest

import d2lightning.config as config
from d2lightning.config import (
    ConfigError,
    UnknownKeyError,
    downgrade_config,
    extend_defaults,
    get_cfg,
    schema,
    upgrade_config,
)


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schema, "_TREE", copy.deepcopy(schema._TREE))


def test_every_public_name_of_detectron2_config_exists() -> None:
    detectron2s = ["CfgNode", "get_cfg", "global_cfg", "set_global_cfg", "downgrade_config", "upgrade_config",
                   "configurable", "instantiate", "LazyCall", "LazyConfig"]  # fmt: skip
    assert [name for name in detectron2s if name not in config.__all__ or not hasattr(config, name)] == []


def test_down_to_version_0_and_up_again_is_the_same_config() -> None:
    cfg = get_cfg()
    cfg.USER_CUSTOM = 1  # a key of the user's is kept
    down = downgrade_config(cfg, to_version=0)
    assert down.VERSION == 0 and cfg.VERSION == 2  # a copy
    assert down.MODEL.WEIGHT == "" and "WEIGHTS" not in down.MODEL
    assert down.TEST.DETECTIONS_PER_IMG == 100 and "DETECTIONS_PER_IMAGE" not in down.TEST
    assert (down.TEST.AUG_ON, down.TEST.AUG_FLIP) == (False, True) and "AUG" not in down.TEST  # the section is gone
    assert upgrade_config(down) == cfg


def test_with_the_architecture_keys_the_anchors_move_as_in_detectron2() -> None:
    extend_defaults(
        {"MODEL": {"ANCHOR_GENERATOR": {"SIZES": [[32]], "ASPECT_RATIOS": [[0.5, 1.0]]}, "RPN": {"HEAD_NAME": "H"},
                   "RETINANET": {"NUM_CLASSES": 80}}},
        source="test",
    )  # fmt: skip
    cfg = get_cfg()
    down = downgrade_config(cfg, to_version=1)
    assert down.MODEL.RPN.ANCHOR_SIZES == [[32]] and "ANCHOR_GENERATOR" not in down.MODEL
    assert (down.MODEL.RETINANET.ANCHOR_SIZES, down.MODEL.RETINANET.ANCHOR_STRIDES) == ([[32]], [])
    assert downgrade_config(cfg, to_version=0).MODEL.RPN_HEAD.NAME == "H"
    assert upgrade_config(down) == cfg
    down.MODEL.META_ARCHITECTURE = "RetinaNet"
    down.MODEL.RETINANET.ANCHOR_SIZES = [[64]]
    assert upgrade_config(down).MODEL.ANCHOR_GENERATOR.SIZES == [[64]]  # RetinaNet's anchors, not the RPN's


@pytest.mark.parametrize(
    ("text", "warning"),
    [
        ("VERSION: 1\nMODEL:\n  WEIGHT: w.pth\nTEST:\n  DETECTIONS_PER_IMG: 7\n", None),
        ("MODEL:\n  WEIGHT: w.pth\nTEST:\n  DETECTIONS_PER_IMG: 7\n", "has no VERSION; it uses version 1 key names"),
    ],
    ids=["version-1", "guessed"],
)
def test_an_older_file_is_read_with_todays_names(tmp_path: Path, text: str, warning: str | None, caplog) -> None:
    path = tmp_path / "old.yaml"
    path.write_text(text)
    cfg = get_cfg()
    with caplog.at_level(logging.WARNING, logger="d2lightning.config"):
        cfg.merge_from_file(str(path))
    assert (cfg.VERSION, cfg.MODEL.WEIGHTS, cfg.TEST.DETECTIONS_PER_IMAGE) == (2, "w.pth", 7)
    assert "WEIGHT" not in cfg.MODEL
    messages = [r.getMessage() for r in caplog.records]
    assert f"Loading config file '{path}' of VERSION 1 by upgrading it to VERSION 2" in messages
    assert any(warning in m for m in messages) if warning else len(messages) == 1


def test_an_older_file_with_a_key_of_neither_version_names_it(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("VERSION: 0\nMODEL:\n  RPN_HEAD:\n    NAME: X\n")  # no MODEL.RPN here without detectron2's keys
    cfg = get_cfg()
    with pytest.raises(UnknownKeyError, match=rf"^Unknown config key 'MODEL.RPN_HEAD' \(in file '{path}'\)"):
        cfg.merge_from_file(str(path))
    assert cfg == get_cfg()  # untouched


@pytest.mark.parametrize(
    ("convert", "message"),
    [
        (lambda c: upgrade_config(c, to_version=1), "Cannot upgrade a config from VERSION 2 to 1"),
        (lambda c: downgrade_config(c, to_version=3), "Cannot convert configs: to_version is 3, known versions are"),
        (lambda c: upgrade_config(c, to_version=-1), "Cannot convert configs: to_version is -1, known versions are"),
    ],
)
def test_impossible_conversions_are_one_line(convert, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}"):
        convert(get_cfg())


def test_config_errors_pickle_with_their_attributes() -> None:
    """An error raised in a launched worker reaches the parent pickled: the command judges it by its type."""
    import pickle

    from d2lightning.config import ConfigFileError, ConfigImportError

    for error in (
        ConfigFileError("m", path="a.yaml", key="K"),
        ConfigImportError("relative import", path="a.py"),
        UnknownKeyError("u", key="A.B", origin="override 'A.B 1'", suggestion="A.C"),
    ):
        back = pickle.loads(pickle.dumps(error))
        assert (type(back), str(back), back.key, back.origin) == (type(error), str(error), error.key, error.origin)
        assert getattr(back, "path", None) == getattr(error, "path", None)
        assert getattr(back, "suggestion", None) == getattr(error, "suggestion", None)

"""``cfg_get``: the one lookup for yacs-style, LazyConfig and plain-dict configs."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from d2lightning.config import get_cfg
from d2lightning.config.lookup import cfg_get


def test_reads_dotted_keys_from_every_kind_of_config() -> None:
    yacs = get_cfg()
    lazy = OmegaConf.create({"train": {"output_dir": "out", "seed": 3}})
    plain = {"LIGHTNING": {"PRECISION": "bf16-mixed"}}
    assert cfg_get(yacs, "SOLVER.MAX_ITER") == yacs.SOLVER.MAX_ITER
    assert cfg_get(lazy, "OUTPUT_DIR", "train.output_dir") == "out"
    assert cfg_get(plain, "LIGHTNING.PRECISION") == "bf16-mixed"


def test_the_first_key_present_wins_and_a_default_covers_none() -> None:
    cfg = {"SEED": 1, "train": {"seed": 2}}
    assert cfg_get(cfg, "SEED", "train.seed") == 1
    assert cfg_get(cfg, "NOPE", "train.seed") == 2
    assert cfg_get(cfg, "NOPE.DEEPER", default=None) is None


def test_a_missing_key_without_default_is_named() -> None:
    with pytest.raises(KeyError, match=r"'LIGHTNING\.PRECISION' / 'train\.precision' is missing"):
        cfg_get({"MODEL": {}}, "LIGHTNING.PRECISION", "train.precision")

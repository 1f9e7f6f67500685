"""default_setup and default_writers, as detectron2's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from d2lightning.config import get_cfg
from d2lightning.engine.defaults import default_argument_parser, default_setup, default_writers
from d2lightning.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter


def test_default_setup_writes_config_log_and_seeds(tmp_path: Path) -> None:
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.SEED = 7
    cfg.SOLVER.BASE_LR = 0.123
    config_file = tmp_path / "c.yaml"
    config_file.write_text("SOLVER:\n  MAX_ITER: 10\n")
    args = default_argument_parser().parse_args(["--config-file", str(config_file)])
    default_setup(cfg, args)
    out = tmp_path / "out"
    saved = get_cfg()
    saved.merge_from_file(str(out / "config.yaml"))
    assert pytest.approx(0.123) == saved.SOLVER.BASE_LR
    assert torch.initial_seed() == 7  # SEED + rank 0
    assert os.environ["PYTHONHASHSEED"] == "7"
    log = (out / "log.txt").read_text()
    assert "Rank of current process: 0. World size: 1" in log
    assert "Environment info:" in log and "lightning" in log
    assert f"Contents of args.config_file={config_file}:" in log and "MAX_ITER: 10" in log
    assert f"Full config saved to {out / 'config.yaml'}" in log


def test_default_setup_accepts_a_dict_of_args_and_random_seed(tmp_path: Path) -> None:
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.CUDNN_BENCHMARK = True
    default_setup(cfg, {})  # detectron2's own test passes {}
    assert torch.backends.cudnn.benchmark is True
    assert "Using a generated random seed" in (tmp_path / "log.txt").read_text()
    torch.backends.cudnn.benchmark = False


def test_default_writers(tmp_path: Path) -> None:
    writers = default_writers(str(tmp_path / "w"), max_iter=100)
    assert [type(w) for w in writers] == [CommonMetricPrinter, JSONWriter, TensorboardXWriter]
    assert (tmp_path / "w" / "metrics.json").exists()
    for w in writers:
        w.close()


def test_rng_states_round_trip_through_a_safe_torch_save(tmp_path: Path) -> None:
    import random

    import numpy as np

    from d2lightning.utils.env import get_rng_states, set_rng_states

    states = get_rng_states()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    torch.save(states, tmp_path / "rng.pt")
    set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected

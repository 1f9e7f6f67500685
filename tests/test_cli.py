"""The ``d2lightning`` command: train / eval / predict, their output files, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from d2lightning import cli
from d2lightning.checkpoint import DetectionCheckpointer
from d2lightning.evaluation import DatasetEvaluator
from d2lightning.model_zoo import builtin_config_names
from d2lightning.modeling import build_model
from tests.helpers import REPO
from tests.helpers.demo import (
    DEMO_CONFIG,
    DEMO_VAL_SUBSET,
    TINY_VAL,
    red_square_cfg,
    red_square_image,
    register_tiny_datasets,
    write_tiny_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    return write_tiny_config(tmp_path / "tiny.yaml")


def _error_and_stdout(capsys: pytest.CaptureFixture[str], argv: list[str], command: str = "train") -> tuple[str, str]:
    """Run the CLI expecting a user error: exit code 1, one ``error:`` line on stderr and no traceback.

    Returns the error message and the standard output.
    """
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    lines = [line for line in captured.err.splitlines() if line.startswith(f"d2lightning {command}: error: ")]
    assert len(lines) == 1, captured.err
    return lines[0].removeprefix(f"d2lightning {command}: error: "), captured.out


def _error_of(capsys: pytest.CaptureFixture[str], argv: list[str], command: str = "train") -> str:
    return _error_and_stdout(capsys, argv, command)[0]


# ---- train --------------------------------------------------------------------------------------------------


def test_demo_config_trains_writes_detectron2s_files_and_prints_the_final_table(tmp_path, capsys):
    """The shipped demo, shortened: 4 iterations, evaluation every 2 on 8 validation images."""
    out = tmp_path / "out"
    register_tiny_datasets()
    argv = ["train", "--config-file", str(DEMO_CONFIG), "OUTPUT_DIR", str(out)]
    argv += ["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "2"]
    argv += ["TEST.PRECISE_BN.NUM_ITER", "2", "DATASETS.TEST", f"('{DEMO_VAL_SUBSET}',)"]
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out
    names = sorted(os.listdir(out))
    assert {"config.yaml", "last_checkpoint", "log.txt", "metrics.json"} <= set(names)
    assert [n for n in names if n.endswith(".pth")] == ["model_0000001.pth", "model_0000003.pth", "model_final.pth"]
    assert len([n for n in names if n.startswith("events.out.tfevents.")]) == 1
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert "META_ARCHITECTURE: ShapesDetector" in (out / "config.yaml").read_text()
    log = (out / "log.txt").read_text()
    assert "Starting training from iteration 0" in log and f"Evaluation results for {DEMO_VAL_SUBSET}" in log
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    # evaluation after iteration 1, then the final one at iter == max_iter (detectron2's after_train iteration)
    assert [r["iteration"] for r in records if "bbox/AP" in r] == [1, 4]
    assert all("total_loss" in r and "lr" in r for r in records if "bbox/AP" not in r)
    assert re.search(r"Training: 100%\|[^|]*\| 4/4 \[", stdout)  # the progress bar (on in the demo config)
    assert "Final evaluation results (box AP, percent):" in stdout
    assert re.search(r"^bbox/AP50 +\d+\.\d\d$", stdout, re.MULTILINE)


def test_progress_bar_counts_iterations_from_the_resumed_one(tmp_path, tiny_config, capsys):
    out = str(tmp_path / "out")
    common = ["train", "--config-file", str(tiny_config), "OUTPUT_DIR", out, "LIGHTNING.PROGRESS_BAR", "True"]
    assert cli.main([*common, "SOLVER.MAX_ITER", "4", "DATASETS.TEST", "()"]) == 0
    first = capsys.readouterr().out
    assert re.search(r"Training: 100%\|[^|]*\| 4/4 \[\d\d:\d\d<\d\d:\d\d", first)  # elapsed<remaining: the ETA
    assert cli.main([*common[:3], "--resume", *common[3:], "SOLVER.MAX_ITER", "6", "DATASETS.TEST", "()"]) == 0
    resumed = capsys.readouterr().out
    assert "Starting training from iteration 4" in resumed
    assert re.search(r"Training:  67%\|[^|]*\| 4/6 \[", resumed)  # the bar starts at start_iter
    assert re.search(r"Training: 100%\|[^|]*\| 6/6 \[", resumed)
    assert "/4 [" not in resumed


def test_resume_without_a_checkpoint_starts_fresh_and_says_so_once(tmp_path, tiny_config, capsys):
    out = tmp_path / "out"
    argv = ["train", "--config-file", str(tiny_config), "--resume", "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "1"]
    assert cli.main([*argv, "DATASETS.TEST", "()"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("No checkpoint found") == 1
    assert f"No checkpoint found in {out}: training starts at iteration 0, from scratch" in stdout
    assert "Starting training from iteration 0" in stdout
    assert (out / "model_final.pth").exists()


def test_eval_only_evaluates_the_given_weights(tmp_path, tiny_config, capsys):
    out = tmp_path / "out"
    assert cli.main(["train", "--config-file", str(tiny_config), "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "1"]) == 0
    capsys.readouterr()
    weights = str(out / "model_final.pth")
    argv = ["eval", "--config-file", str(tiny_config), "OUTPUT_DIR", str(tmp_path / "ev"), "MODEL.WEIGHTS", weights]
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out
    assert f"Loading from {weights}" in stdout
    assert "Final evaluation results (box AP, percent):" in stdout
    assert not any(n.endswith(".pth") for n in os.listdir(tmp_path / "ev"))


class _NotANumberEvaluator(DatasetEvaluator):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        pass

    def evaluate(self) -> dict[str, Any]:
        return {"bbox": {"AP": "n/a"}}


def test_evaluator_returning_non_numbers_is_a_one_line_error(tmp_path, tiny_config, capsys, monkeypatch):
    import d2lightning.evaluation

    monkeypatch.setattr(d2lightning.evaluation, "COCOEvaluator", _NotANumberEvaluator)
    argv = ["train", "--config-file", str(tiny_config), "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.MAX_ITER", "1"]
    message, stdout = _error_and_stdout(capsys, argv)
    assert message == f"The evaluator of {TINY_VAL} should return a nested dict of float. Got 'bbox/AP: n/a' instead."
    assert "Exception during training: (traceback in log.txt; D2L_DEBUG=1 shows it here)" in stdout
    # the traceback stays available in the log file
    assert "Exception during training:\nTraceback (most recent call last):" in (tmp_path / "out/log.txt").read_text()


# ---- bad input ------------------------------------------------------------------------------------------------


def test_config_file_missing_not_given_or_unreadable(tmp_path, capsys):
    missing = tmp_path / "missing.yaml"
    not_found = (
        f"Config file '{missing}' does not exist and is not a built-in config either; "
        "built-in configs: Base-D2Lightning.yaml, shapes_detector.yaml"
    )
    assert _error_of(capsys, ["train", "--config-file", str(missing)]) == not_found
    assert _error_of(capsys, ["train", "--config-file", str(tmp_path)]) == f"Config file '{tmp_path}' is not a file."
    assert (
        _error_of(capsys, ["train"])
        == "--config-file is required (a YAML file, or a built-in config such as shapes_detector)"
    )
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01MODEL: [")
    assert _error_of(capsys, ["train", "--config-file", str(binary)]).startswith(f"Cannot parse config file '{binary}'")
    missing_image_cfg = ["predict", "--config-file", str(missing), "--input", "x.png", "--output", "y.png"]
    assert _error_of(capsys, missing_image_cfg, "predict") == not_found


def test_unknown_architecture_lists_the_registered_ones(tmp_path, tiny_config, capsys):
    argv = ["train", "--config-file", str(tiny_config), "OUTPUT_DIR", str(tmp_path), "MODEL.META_ARCHITECTURE", "Nope"]
    message = _error_of(capsys, argv)
    assert message.startswith("No object named 'Nope' found in 'META_ARCH' registry! Registered names: [")
    assert "'ShapesDetector'" in message


def test_unknown_dataset_lists_the_registered_ones(tmp_path, tiny_config, capsys):
    argv = ["train", "--config-file", str(tiny_config), "OUTPUT_DIR", str(tmp_path), "DATASETS.TRAIN", "('nope',)"]
    message = _error_of(capsys, argv)
    assert message.startswith("Dataset 'nope' is not registered! Available datasets are: ")
    assert "shapes_train" in message and "shapes_val" in message and TINY_VAL in message


def test_architecture_keys_are_validated_in_files_and_overrides(tmp_path, capsys):
    """A model's own config keys (MODEL.SHAPES_DETECTOR.*) get the same unknown-key and type checks."""
    write_tiny_config(tmp_path / "tiny.yaml")
    typo = tmp_path / "typo.yaml"
    typo.write_text("_BASE_: tiny.yaml\nMODEL:\n  SHAPES_DETECTOR:\n    NUM_CLASES: 4\n")
    assert _error_of(capsys, ["train", "--config-file", str(typo)]) == (
        f"Unknown config key 'MODEL.SHAPES_DETECTOR.NUM_CLASES' (in file {str(typo)!r}). "
        "Did you mean 'MODEL.SHAPES_DETECTOR.NUM_CLASSES'?"
    )
    good = tmp_path / "tiny.yaml"
    assert _error_of(capsys, ["train", "--config-file", str(good), "MODEL.SHAPES_DETECTOR.HEAD_WIDHT", "3"]) == (
        "Unknown config key 'MODEL.SHAPES_DETECTOR.HEAD_WIDHT' (in override 'MODEL.SHAPES_DETECTOR.HEAD_WIDHT 3'). "
        "Did you mean 'MODEL.SHAPES_DETECTOR.HEAD_WIDTH'?"
    )
    assert _error_of(capsys, ["train", "--config-file", str(good), "MODEL.SHAPES_DETECTOR.HEAD_WIDTH=wide"]) == (
        "Config key 'MODEL.SHAPES_DETECTOR.HEAD_WIDTH' (in override 'MODEL.SHAPES_DETECTOR.HEAD_WIDTH=wide') "
        "expects int, got str 'wide'."
    )


def test_subprocess_exit_code_and_single_stderr_line(tmp_path):
    """A --config-file that is neither a file nor a built-in config: one line, the built-in names, the closest."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "d2lightning", "train", "--config-file", "configs/shapes_detectr.yaml"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 1
    names = builtin_config_names()
    assert "shapes_detector.yaml" in names
    assert proc.stderr.strip() == (
        "d2lightning train: error: Config file 'configs/shapes_detectr.yaml' does not exist and is not a built-in "
        f"config either; built-in configs: {', '.join(names)}; did you mean 'shapes_detector.yaml'?"
    )
    assert proc.stdout == ""


# ---- predict ----------------------------------------------------------------------------------------------------


@pytest.fixture
def red_square_setup(tmp_path) -> tuple[Path, Path, Path]:
    """A RedSquareDetector config file, its weights, and a 120 x 160 PNG with a red square at (60, 30, 100, 70)."""
    cfg = red_square_cfg(tmp_path / "out")
    model = build_model(cfg)
    DetectionCheckpointer(model, str(tmp_path)).save("weights")
    config = tmp_path / "red.yaml"
    config.write_text(
        "MODEL:\n  META_ARCHITECTURE: RedSquareDetector\n  DEVICE: cpu\n"
        f"INPUT:\n  MIN_SIZE_TEST: 64\n  MAX_SIZE_TEST: 100\nDATASETS:\n  TEST: ('{TINY_VAL}',)\n"
        f"OUTPUT_DIR: {tmp_path / 'out'}\n"
    )
    image = tmp_path / "in.png"
    Image.fromarray(np.ascontiguousarray(red_square_image(120, 160, (60, 30, 100, 70))[:, :, ::-1])).save(image)
    return config, tmp_path / "weights.pth", image


def test_predict_draws_the_predictions(tmp_path, red_square_setup, capsys):
    config, weights, image = red_square_setup
    output = tmp_path / "pred.png"
    argv = ["predict", "--config-file", str(config), "--input", str(image), "--output", str(output)]
    assert cli.main([*argv, "MODEL.WEIGHTS", str(weights)]) == 0
    assert f"1 instance(s) above 0.5 written to {output}" in capsys.readouterr().out
    before, after = np.asarray(Image.open(image).convert("RGB")), np.asarray(Image.open(output).convert("RGB"))
    assert after.shape == before.shape == (120, 160, 3)
    changed = np.any(after != before, axis=2)
    assert changed[50, 59:61].any() and changed[50, 99:101].any()  # the box's left and right sides
    assert changed[29:31, 80].any() and changed[69:71, 80].any()  # its top and bottom
    assert not changed[100:, :].any() and not changed[:, :50].any()  # nothing far from the box


def test_predict_uses_the_last_checkpoint_of_output_dir(tmp_path, red_square_setup, capsys):
    config, weights, image = red_square_setup
    out = tmp_path / "out"
    out.mkdir()
    os.replace(weights, out / "weights.pth")
    (out / "last_checkpoint").write_text("weights.pth")
    argv = ["predict", "--config-file", str(config), "--input", str(image), "--output", str(tmp_path / "p.png")]
    assert cli.main(argv) == 0
    assert f"(weights {out / 'weights.pth'})" in capsys.readouterr().out
    (out / "last_checkpoint").unlink()
    assert (
        _error_of(capsys, argv, "predict") == f"MODEL.WEIGHTS is empty and {str(out)!r} has no checkpoint: train first"
    )


def test_predict_bad_images(tmp_path, red_square_setup, capsys):
    config, weights, _ = red_square_setup
    argv = ["predict", "--config-file", str(config), "--output", str(tmp_path / "p.png"), "MODEL.WEIGHTS", str(weights)]
    missing = tmp_path / "missing.png"
    assert _error_of(capsys, [*argv[:3], "--input", str(missing), *argv[3:]], "predict") == (
        f"input image {str(missing)!r} does not exist"
    )
    message = _error_of(capsys, [*argv[:3], "--input", str(config), *argv[3:]], "predict")
    assert message.startswith(f"input {str(config)!r} is not an image that can be read")
    assert not (tmp_path / "p.png").exists()


def test_expected_results_mismatch_fails_train_and_eval(tmp_path, tiny_config, capsys):
    out = tmp_path / "out"
    expected = ["TEST.EXPECTED_RESULTS", "[['bbox', 'AP', 99.0, 0.01]]"]
    argv = ["train", "--config-file", str(tiny_config), "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "1"]
    message, stdout = _error_and_stdout(capsys, [*argv, *expected])
    assert message == "the evaluation results do not match TEST.EXPECTED_RESULTS (the log lists the differences)"
    assert "Result verification failed!" in stdout
    argv = [
        "eval",
        "--config-file",
        str(tiny_config),
        "OUTPUT_DIR",
        str(out),
        "MODEL.WEIGHTS",
        str(out / "model_final.pth"),
    ]
    assert _error_of(capsys, [*argv, *expected], "eval") == message
    assert cli.main([*argv, "TEST.EXPECTED_RESULTS", "[['bbox', 'AP', 50.0, 50.0]]"]) == 0
    assert "Results verification passed." in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "eval"])
def test_train_and_eval_take_detectron2s_arguments(command):
    from d2lightning.engine import default_argument_parser

    argv = ["--config-file", "c.yaml", "--num-gpus", "2", "SOLVER.MAX_ITER", "10", "SEED=1"]
    args = vars(cli.build_parser().parse_args([command, *argv]))
    assert args.pop("command") == command and callable(args.pop("func"))
    expected = vars(default_argument_parser().parse_args(argv))
    if command == "eval":
        expected["eval_only"] = True
    assert args == expected


def test_repeated_main_calls_install_the_lightning_tip_filter_once() -> None:
    import logging

    from d2lightning.cli import _quiet_lightning_notices

    _quiet_lightning_notices()
    _quiet_lightning_notices()
    filters = logging.getLogger("lightning.pytorch.utilities.rank_zero").filters
    assert sum(getattr(f, "__name__", "") == "_not_a_tip" for f in filters) == 1

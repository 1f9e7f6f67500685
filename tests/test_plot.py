"""``d2lightning plot``: metrics.json (detectron2's format, restarts included) to a PNG of loss, lr and AP curves."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from d2lightning import plot
from d2lightning.cli import main

PNG_SIZE = (900, 1000)  # figsize (9, 10) at 100 dpi


def write_lines(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# detectron2's JSONWriter output of a run interrupted after iteration 59 and resumed from the checkpoint at 39
DETECTRON2_STYLE = [
    {"iteration": 19, "total_loss": 3.0, "loss_cls": 2.0, "loss_box_reg": 1.0, "lr": 0.01, "data_time": 0.1},
    {"iteration": 39, "total_loss": 2.0, "loss_cls": 1.5, "loss_box_reg": 0.5, "lr": 0.02, "bbox/AP": 10.0, "bbox/AP50": 20.0, "bbox/APl": float("nan")},
    {"iteration": 59, "total_loss": 1.8, "loss_cls": 1.3, "loss_box_reg": 0.5, "lr": 0.02, "eta_seconds": 5.0},
    {"iteration": 59, "bbox/AP": 11.0, "bbox/AP50": 22.0},
    # restart: iterations 40.. are written again
    {"iteration": 49, "total_loss": 1.9, "loss_cls": 1.4, "loss_box_reg": 0.5, "lr": 0.02},
    {"iteration": 69, "total_loss": 1.5, "loss_cls": 1.1, "loss_box_reg": 0.4, "lr": 0.02, "bbox/AP": 15.0, "bbox/AP50": 30.0},
]  # fmt: skip


def test_load_metrics_keeps_the_resumed_history(tmp_path: Path) -> None:
    metrics = plot.load_metrics(write_lines(tmp_path / "metrics.json", DETECTRON2_STYLE))
    assert metrics["total_loss"] == [(19, 3.0), (39, 2.0), (49, 1.9), (69, 1.5)]
    assert metrics["lr"] == [(19, 0.01), (39, 0.02), (49, 0.02), (69, 0.02)]
    # the AP of the interrupted run at 59 is gone; NaN is left out
    assert metrics["bbox/AP"] == [(39, 10.0), (69, 15.0)]
    assert metrics["bbox/AP50"] == [(39, 20.0), (69, 30.0)]
    assert "bbox/APl" not in metrics
    assert "eta_seconds" not in metrics  # only the interrupted run wrote it, at 59
    assert metrics["data_time"] == [(19, 0.1)]


def test_the_same_iteration_twice_keeps_the_last_value(tmp_path: Path) -> None:
    records = [{"iteration": 9, "total_loss": 1.0}, {"iteration": 9, "total_loss": 0.5, "bbox/AP": 3.0}]
    metrics = plot.load_metrics(write_lines(tmp_path / "m.json", records))
    assert metrics == {"total_loss": [(9, 0.5)], "bbox/AP": [(9, 3.0)]}


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert (image.format, image.size) == ("PNG", PNG_SIZE)
        # not a blank canvas: curves, text and grid lines draw many colours
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 50


def test_plot_a_detectron2_style_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_lines(tmp_path / "metrics.json", DETECTRON2_STYLE)
    assert main(["plot", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "metrics.png")
    assert_png(tmp_path / "metrics.png")
    out = tmp_path / "figures" / "curves.png"
    assert main(["plot", str(tmp_path / "metrics.json"), "--output", str(out)]) == 0
    assert_png(out)


def test_plot_a_short_demo_run(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    argv = [
        "train", "--config-file", "shapes_detector",
        "SOLVER.MAX_ITER", "40", "SOLVER.IMS_PER_BATCH", "4", "TEST.EVAL_PERIOD", "20",
        "TEST.PRECISE_BN.ENABLED", "False", "SOLVER.CHECKPOINT_PERIOD", "1000", "LIGHTNING.PROGRESS_BAR", "False",
        "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    metrics = plot.load_metrics(out)
    assert [it for it, _ in metrics["total_loss"]] == [19, 39]
    assert [it for it, _ in metrics["bbox/AP50"]] == [19, 40]  # periodic evaluation, then the final one
    assert main(["plot", str(out)]) == 0
    assert_png(out / "metrics.png")


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plot", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"d2lightning plot: error: no metrics.json in {tmp_path}: give a training output directory (OUTPUT_DIR) "
        "or a metrics.json file"
    )
    with pytest.raises(FileNotFoundError, match=r"nope.json does not exist"):
        plot.load_metrics(tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", r"m.json is empty: nothing to plot"),
        ('{"iteration": 1}\nnot json\n', r"m.json, line 2: not JSON"),
        ('{"total_loss": 1.0}\n', r"m.json, line 1: expected an object with an integer 'iteration'"),
    ],
)
def test_malformed_files_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "m.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        plot.load_metrics(tmp_path / "m.json")


def test_without_matplotlib_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_lines(tmp_path / "metrics.json", DETECTRON2_STYLE)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    assert main(["plot", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == (
        "d2lightning plot: error: plotting needs matplotlib, an optional dependency: pip install 'd2lightning[plot]'"
    )

"""``d2lightning train --config-file X.py``: detectron2's ``lazyconfig_train_net.py`` recipe on d2lightning, without
detectron2 — the demo LazyConfig against the YAML demo, ``--resume``, ``--eval-only``, AMP, and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from d2lightning import cli
from tests.helpers import DEMO_CONFIG, REPO
from tests.helpers.detectron2_runs import metrics_lines
from tests.helpers.logs import restored_loggers

pytestmark = pytest.mark.usefixtures("one_thread")
LAZY_DEMO = "shapes_detector.py"  # the built-in LazyConfig, by name
YAML_DEMO = str(DEMO_CONFIG)


def _train(*argv: str) -> int:
    with restored_loggers():
        return cli.main(["train", *argv])


def _lazy(out: Path, max_iter: int, *extra: str) -> list[str]:
    """The demo LazyConfig, ``max_iter`` iterations, 5 of warmup (a fraction of max_iter), batches of 8."""
    return [
        "--config-file", LAZY_DEMO, f"train.output_dir={out}", f"train.max_iter={max_iter}",
        f"lr_multiplier.warmup_length={min(5 / max_iter, 1.0)}", "dataloader.train.total_batch_size=8", *extra,
    ]  # fmt: skip


def _eval_lines(out: Path) -> list[dict[str, Any]]:
    return [d for d in metrics_lines(out / "metrics.json") if "bbox/AP" in d]


def _printed_ap50(stdout: str) -> str:
    """The AP50 of the "Final evaluation results" table the command prints."""
    (value,) = re.findall(r"^bbox/AP50 +(\S+)$", stdout, re.MULTILINE)
    return value


@pytest.mark.slow
def test_the_demo_lazyconfig_trains_to_the_yaml_demos_results(tmp_path: Path) -> None:
    lazy, yaml = tmp_path / "lazy", tmp_path / "yaml"
    assert _train(*_lazy(lazy, 20)) == 0
    # the YAML demo at the same length; PreciseBN off: lazyconfig_train_net.py's hook list has no PreciseBN
    assert (
        _train(
            "--config-file", YAML_DEMO, "OUTPUT_DIR", str(yaml), "SOLVER.MAX_ITER", "20", "SOLVER.WARMUP_ITERS", "5",
            "SOLVER.IMS_PER_BATCH", "8", "TEST.PRECISE_BN.ENABLED", "False", "LIGHTNING.PROGRESS_BAR", "False",
        )
        == 0
    )  # fmt: skip
    # same model, data, optimizer, schedule and seed: every logged value is the same, box AP included
    assert metrics_lines(lazy / "metrics.json") == metrics_lines(yaml / "metrics.json")
    (final,) = _eval_lines(lazy)
    assert final["iteration"] == 20 and final["bbox/AP50"] > 0
    assert sorted(p.name for p in lazy.iterdir() if p.suffix == ".pth") == ["model_final.pth"]
    saved = (lazy / "config.yaml").read_text()  # default_setup saved the LazyConfig as YAML
    assert "_target_: d2lightning.modeling.ShapesDetector" in saved and "max_iter: 20\n" in saved


@pytest.mark.slow
def test_resume_and_eval_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    period = "train.checkpointer.period=2"
    assert _train(*_lazy(out, 4, period, "train.eval_period=100")) == 0
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert _train("--resume", *_lazy(out, 6, period, "train.eval_period=100")) == 0
    log = (out / "log.txt").read_text()
    assert "Starting training from iteration 0" in log and "Starting training from iteration 4" in log
    assert [d["iteration"] for d in _eval_lines(out)] == [4, 6]
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".pth") == [
        "model_0000001.pth", "model_0000003.pth", "model_0000005.pth", "model_final.pth",
    ]  # fmt: skip

    # --eval-only evaluates train.init_checkpoint: the final evaluation of training, again
    capsys.readouterr()
    weights = f"train.init_checkpoint={out / 'model_final.pth'}"
    assert _train("--eval-only", *_lazy(tmp_path / "eval", 6, weights)) == 0
    final = _eval_lines(out)[-1]
    assert _printed_ap50(capsys.readouterr().out) == f"{final['bbox/AP50']:.2f}"
    # `d2lightning eval --resume` evaluates the last checkpoint of train.output_dir instead
    with restored_loggers():
        assert cli.main(["eval", "--resume", *_lazy(out, 6)]) == 0
    assert _printed_ap50(capsys.readouterr().out) == f"{final['bbox/AP50']:.2f}"


@pytest.mark.slow
def test_amp_enabled_trains_with_amptrainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import d2lightning.engine as engine

    built: list[str] = []

    class Recording(engine.AMPTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append("AMPTrainer")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(engine, "AMPTrainer", Recording)
    out = tmp_path / "amp"
    assert _train(*_lazy(out, 2, "train.amp.enabled=True", "train.eval_period=100")) == 0
    assert built == ["AMPTrainer"]
    lines = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert lines[0]["iteration"] == 1 and "total_loss" in lines[0]


@pytest.mark.parametrize(
    "source, message",
    [
        ("x = dict(\n", r"^d2lightning train: error: Config file '.*bad\.py' has a syntax error at line 1: "),
        (
            "model = dict(_target_='no_such_module.Model')\n",
            r"^d2lightning train: error: LazyConfig '.*bad\.py' lacks 'optimizer', 'lr_multiplier', ",
        ),
    ],
)
def test_bad_lazyconfig_files_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], source: str, message: str
) -> None:
    path = tmp_path / "bad.py"
    path.write_text(source)
    assert _train("--config-file", str(path)) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.match(message, err), err


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "train.max_itr=5",
            "Unknown config key 'train.max_itr' (in override 'train.max_itr=5'). Did you mean 'train.max_iter'?",
        ),
        (
            "model._target_=no_such_module.Model",
            "Cannot import _target_ 'no_such_module.Model' at 'model': No module named 'no_such_module'",
        ),
        (
            "model._target_=3",
            "_target_ at 'model' is 3 (int), which is not callable; give a class or function, or its dotted name",
        ),
    ],
)
def test_bad_overrides_and_targets_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, message: str
) -> None:
    assert _train(*_lazy(tmp_path, 2), override) == 1
    assert capsys.readouterr().err == f"d2lightning train: error: {message}\n"


@pytest.mark.slow
def test_num_gpus_2_trains_the_lazyconfig_on_two_processes(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.helpers.distributed import LAUNCHER_VARS, free_port

    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    env["PYTHONPATH"] = str(REPO)
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "d2lightning", "train", "--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{free_port()}",
        *_lazy(out, 4, "train.checkpointer.period=2", "train.eval_period=2"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Final evaluation results (box AP, percent)" in proc.stdout
    log0, log1 = (out / "log.txt").read_text(), (out / "log.txt.rank1").read_text()
    assert "Rank of current process: 1. World size: 2" in log1
    assert log0.count("Saving checkpoint to") == 3 and "Saving checkpoint" not in log1  # 1, 3 and final, on rank 0
    assert log0.count("Start inference on") == log1.count("Start inference on") == 2  # on every rank
    assert [d["iteration"] for d in _eval_lines(out)] == [1, 4]  # EvalHook: after iteration 1 (the 2nd), and at the end


def test_a_warmup_over_the_whole_run_warns_once_naming_both_keys(d2_log: Any) -> None:
    from d2lightning.config import LazyConfig
    from d2lightning.engine.recipes.lazy_training import _lr_multiplier
    from d2lightning.model_zoo import get_config_file
    from d2lightning.solver import WarmupParamScheduler

    cfg = LazyConfig.load(get_config_file(LAZY_DEMO))
    assert isinstance(_lr_multiplier(cfg), WarmupParamScheduler)  # the demo's 100 of 600 iterations: no warning
    LazyConfig.apply_overrides(cfg, ["train.max_iter=50", "lr_multiplier.warmup_length=1.0"])
    _lr_multiplier(cfg)
    assert [m for m in d2_log.messages if "warmup" in m] == [
        "lr_multiplier.warmup_length (1) covers all of train.max_iter (50): the learning rate warms up during the "
        "whole run and never reaches the optimizer's lr; lower lr_multiplier.warmup_length (a fraction of "
        "train.max_iter, e.g. 0.1)"
    ]

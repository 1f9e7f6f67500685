"""Tests for hooks.BestCheckpointer: detectron2's save counts, files and warnings, in both run modes."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch

from d2lightning.checkpoint import Checkpointer, DetectionCheckpointer
from d2lightning.engine import hooks
from tests.helpers.checkpoint import MODES, files, fit, new_trainer
from tests.helpers.training import SimpleModel


def eval_stand_in(period: int, values: Iterator[float], name: str = "metric") -> hooks.CallbackHook:
    """What ``EvalHook(period, lambda: {name: next(values)})`` puts into the storage, and when."""

    def put(trainer: Any) -> None:
        trainer.storage.put_scalars(**{name: next(values)}, smoothing_hint=False)

    def after_step(trainer: Any) -> None:
        if (trainer.iter + 1) % period == 0 and trainer.iter + 1 != trainer.max_iter:
            put(trainer)

    def after_train(trainer: Any) -> None:
        if trainer.iter + 1 >= trainer.max_iter:
            put(trainer)

    return hooks.CallbackHook(after_step=after_step, after_train=after_train)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("metric_mode", "values", "saves"),
    [
        ("max", [0.3, 0.4, 0.35, 0.5], 3),
        ("min", [1.0, 0.8, 0.9, 0.9], 2),
        ("min", [math.nan, 0.8, 0.9, 0.9], 1),
        ("max", [math.inf, 0.1, math.nan, 0.2], 2),
    ],
)
def test_oracle_save_counts(tmp_path: Path, mode: str, metric_mode: str, values: list[float], saves: int) -> None:
    """detectron2's tests/test_engine.py::test_best_checkpointer (40 iterations, eval period 10)."""
    model = SimpleModel()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    trainer = new_trainer(model, opt)
    checkpointer = Checkpointer(model, str(tmp_path), opt=opt, trainer=trainer)
    best = hooks.BestCheckpointer(10, checkpointer, "metric", mode=metric_mode)
    with mock.patch.object(checkpointer, "save", wraps=checkpointer.save) as save:
        fit(mode, trainer, [eval_stand_in(10, iter(values)), best], 40)
    assert save.call_count == saves


@pytest.mark.parametrize("mode", MODES)
def test_best_file_iteration_and_last_checkpoint_side_effect(tmp_path: Path, mode: str) -> None:
    model = SimpleModel()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    ckpt = DetectionCheckpointer(model, str(tmp_path))
    hook_list = [
        hooks.PeriodicCheckpointer(ckpt, 10),
        eval_stand_in(10, iter([0.3, 0.6, 0.35, 0.5]), name="bbox/AP50"),
        hooks.BestCheckpointer(10, ckpt, "bbox/AP50"),
    ]
    fit(mode, new_trainer(model, opt), hook_list, 40)
    assert files(tmp_path) == [
        "last_checkpoint",
        "model_0000009.pth",
        "model_0000019.pth",
        "model_0000029.pth",
        "model_0000039.pth",
        "model_best.pth",
        "model_final.pth",
    ]
    assert torch.load(tmp_path / "model_best.pth", weights_only=True)["iteration"] == 19  # 0.6, put at iter 19
    # the best was saved at iteration 19 (pointing last_checkpoint at it); later periodic saves moved it on
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert hook_list[2].best_metric == 0.6  # type: ignore[attr-defined]
    assert hook_list[2].best_iter == 19  # type: ignore[attr-defined]


def test_best_save_rewrites_last_checkpoint(tmp_path: Path) -> None:
    model = SimpleModel()
    ckpt = DetectionCheckpointer(model, str(tmp_path))
    hook_list = [
        hooks.PeriodicCheckpointer(ckpt, 10),
        eval_stand_in(10, iter([0.3, 0.6])),
        hooks.BestCheckpointer(10, ckpt, "metric"),
    ]
    fit("simple", new_trainer(model, torch.optim.SGD(model.parameters(), 0.1)), hook_list, 20)
    # the final evaluation (put at iteration 20, after training) was the best: last_checkpoint now names it
    assert (tmp_path / "last_checkpoint").read_text() == "model_best.pth"
    assert torch.load(tmp_path / "model_best.pth", weights_only=True)["iteration"] == 20


def test_missing_metric_warns_and_saves_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = SimpleModel()
    ckpt = DetectionCheckpointer(model, str(tmp_path))
    with caplog.at_level(logging.WARNING):
        fit(
            "simple",
            new_trainer(model, torch.optim.SGD(model.parameters(), 0.1)),
            [hooks.BestCheckpointer(5, ckpt, "bbox/AP")],
            10,
        )
    assert files(tmp_path) == []
    expected = "Given val metric bbox/AP does not seem to be computed/stored.Will not be checkpointing based on it."
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [expected, expected]


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (
            (10, "metric"),
            {"mode": "avg"},
            ValueError,
            'Mode "avg" to `BestCheckpointer` is unknown. It should be one of {"max", "min"}.',
        ),
        ((-1, "metric"), {}, ValueError, "BestCheckpointer eval_period must be an int >= 0, got -1"),
        ((10, ""), {}, ValueError, "val_metric must be a non-empty metric name, got ''"),
        ((10, "metric"), {"file_prefix": ""}, ValueError, "file_prefix must be a non-empty file name, got ''"),
    ],
)
def test_bad_arguments(args: tuple, kwargs: dict, error: type, match: str) -> None:
    period, metric = args
    with pytest.raises(error, match=re.escape(match)):
        hooks.BestCheckpointer(period, Checkpointer(SimpleModel()), metric, **kwargs)


def test_checkpointer_without_save_is_refused() -> None:
    with pytest.raises(TypeError, match="checkpointer must have a save"):
        hooks.BestCheckpointer(10, object(), "metric")

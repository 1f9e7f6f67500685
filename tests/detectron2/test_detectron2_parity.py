"""Side by side: detectron2's own ``SimpleTrainer`` and d2lightning's, with the same detectron2 hooks.

For the same model initialisation, data, start/max iterations and hooks, both runs must produce the same hook
call sequence (``trainer.iter`` and ``storage.iter`` at every call, exceptions included), the same
``metrics.json`` lines (detectron2's ``JSONWriter`` in its ``PeriodicWriter``), and the same checkpoint files
(detectron2's ``PeriodicCheckpointer`` + ``DetectionCheckpointer``) at the same iterations. d2lightning runs
both as ``SimpleTrainer.train`` ("simple") and, for runs starting at 0, as a plain Lightning fit ("lightning").
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers.detectron2_runs import DETECTRON2_MARKS, MODES, d2_recorder, train_d2lightning, train_detectron2
from tests.helpers.training import SimpleModel

pytestmark = DETECTRON2_MARKS

Runner = Callable[[torch.nn.Module, torch.optim.Optimizer, list[Any], int, int], Any]


def _runners(start: int) -> dict[str, Runner]:
    """detectron2's trainer and every d2lightning entry point that can start at ``start``."""
    runners: dict[str, Runner] = {"detectron2": train_detectron2}
    for mode in MODES:
        if mode == "simple" or start == 0:
            runners[mode] = lambda m, o, h, s, e, mode=mode: train_d2lightning(mode, m, o, h, s, e)
    return runners


def _outcome(run: Callable[[], Any]) -> str | None:
    try:
        run()
    except Exception as e:  # the same exception must come out of both trainers
        return f"{type(e).__name__}: {e}"
    return None


# ---------------------------------------------------------------- hook call sequences
SEQUENCE_CASES = {
    "plain": (0, 4, None, None),
    "resumed": (2, 6, None, None),
    "model fails at iteration 3": (0, 5, 3, None),
    "hook fails in after_step": (0, 5, None, ("after_step", 1)),
    "hook fails in before_step": (2, 6, None, ("before_step", 4)),
    "hook fails in after_backward": (0, 4, None, ("after_backward", 2)),
    "hook fails in before_train": (0, 3, None, ("before_train", 0)),
    "hook fails in the last after_step": (0, 5, None, ("after_step", 4)),
    "start_iter == max_iter": (4, 4, None, None),
    "start_iter > max_iter": (5, 3, None, None),
    "hook fails in after_train": (0, 3, None, ("after_train", 3)),
    "start_iter == max_iter, hook fails in before_train": (2, 2, None, ("before_train", 2)),
    "start_iter == max_iter == 0": (0, 0, None, None),
}


def _sequence(runner: Runner, start: int, stop: int, model_fails: int | None, hook_fails: Any) -> tuple[Any, ...]:
    calls: list[Any] = []
    torch.manual_seed(0)
    model = SimpleModel(fail_at_call=model_fails)
    opt = torch.optim.SGD(model.parameters(), 0.1)
    hooks = [d2_recorder("A", calls, fail_in=hook_fails), d2_recorder("B", calls)]
    error = _outcome(lambda: runner(model, opt, hooks, start, stop))
    return calls, error


@pytest.mark.parametrize(
    "case",
    list(SEQUENCE_CASES),
)
def test_hook_call_sequences_match(case: str) -> None:
    start, stop, model_fails, hook_fails = SEQUENCE_CASES[case]
    runners = _runners(start)
    expected = _sequence(runners.pop("detectron2"), start, stop, model_fails, hook_fails)
    assert expected[0], "detectron2 made no hook call"
    for name, runner in runners.items():
        assert _sequence(runner, start, stop, model_fails, hook_fails) == expected, name


def test_hook_failure_sequence_is_detectron2s_literally() -> None:
    # spec: an exception in A.after_step at iteration 1 skips B.after_step; every hook's after_train still runs,
    # with trainer.iter (and storage.iter) left at the failing iteration
    calls, error = _sequence(_runners(0)["simple"], 0, 5, None, ("after_step", 1))
    assert calls == [
        ("A", "before_train", 0, 0), ("B", "before_train", 0, 0),
        ("A", "before_step", 0, 0), ("B", "before_step", 0, 0),
        ("A", "after_backward", 0, 0), ("B", "after_backward", 0, 0),
        ("A", "after_step", 0, 0), ("B", "after_step", 0, 0),
        ("A", "before_step", 1, 1), ("B", "before_step", 1, 1),
        ("A", "after_backward", 1, 1), ("B", "after_backward", 1, 1),
        ("A", "after_step", 1, 1),
        ("A", "after_train", 1, 1), ("B", "after_train", 1, 1),
    ]  # fmt: skip
    assert error == "RuntimeError: hook failed"


# ---------------------------------------------------------------- metrics.json
_TIMING_KEYS = {"time", "data_time", "rank_data_time", "eta_seconds"}  # same keys, values are measured times


def _metrics(runner: Runner, tmp: Path, start: int, stop: int, model_fails: int | None) -> tuple[Any, ...]:
    from detectron2.engine import hooks as d2_hooks
    from detectron2.utils.events import CommonMetricPrinter, JSONWriter

    torch.manual_seed(0)
    model = SimpleModel(fail_at_call=model_fails, two_losses=True)
    opt = torch.optim.SGD(model.parameters(), 0.1)
    n = count(1)
    hooks = [
        d2_hooks.IterationTimer(),
        d2_hooks.LRScheduler(opt, torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)),
        d2_hooks.EvalHook(4, lambda: {"bbox": {"AP": float(next(n)), "AP50": 50.0}}),
        d2_hooks.PeriodicWriter([CommonMetricPrinter(stop), JSONWriter(str(tmp / "metrics.json"))], period=3),
    ]
    error = _outcome(lambda: runner(model, opt, hooks, start, stop))
    lines = [json.loads(line) for line in (tmp / "metrics.json").read_text().splitlines()]
    values = [{k: v for k, v in d.items() if k not in _TIMING_KEYS} for d in lines]
    return [(d["iteration"], sorted(d)) for d in lines], values, error


METRICS_CASES = {"from 0": (0, 10, None), "resumed": (3, 11, None), "model fails at iteration 6": (0, 10, 6)}


@pytest.mark.parametrize("case", list(METRICS_CASES))
def test_metrics_json_matches(case: str, tmp_path: Path) -> None:
    start, stop, model_fails = METRICS_CASES[case]
    runners = _runners(start)
    (tmp_path / "detectron2").mkdir()
    expected = _metrics(runners.pop("detectron2"), tmp_path / "detectron2", start, stop, model_fails)
    assert len(expected[0]) >= 3
    for name, runner in runners.items():
        (tmp_path / name).mkdir()
        got = _metrics(runner, tmp_path / name, start, stop, model_fails)
        assert got[0] == expected[0], f"{name}: iterations and keys"
        assert got[1] == expected[1], f"{name}: values of losses, lr and evaluation"
        assert got[2] == expected[2], f"{name}: exception"


def test_metrics_json_iterations_are_detectron2s_literally(tmp_path: Path) -> None:
    lines, _, error = _metrics(_runners(0)["simple"], tmp_path, 0, 10, None)
    train = ["data_time", "eta_seconds", "iteration", "loss_a", "loss_b", "lr", "rank_data_time", "time", "total_loss"]
    evaluation = ["bbox/AP", "bbox/AP50", "iteration"]
    # one write every 3 iterations and one after training; a write's lines follow the order in which the
    # storage first saw each key, so the training line comes before the evaluation of an earlier iteration
    assert lines == [(2, train), (5, train), (3, evaluation), (8, train), (7, evaluation), (9, train), (10, evaluation)]
    assert error is None


# ---------------------------------------------------------------- checkpoint files
def _checkpoints(runner: Runner, tmp: Path, start: int, stop: int, model_fails: int | None) -> tuple[Any, ...]:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import hooks as d2_hooks

    torch.manual_seed(0)
    model = SimpleModel(fail_at_call=model_fails)
    opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    seen: list[tuple[str, int, list[str]]] = []

    def look(point: str) -> Callable[[Any], None]:
        return lambda t: seen.append((point, t.iter, sorted(os.listdir(tmp))))

    hooks = [
        d2_hooks.PeriodicCheckpointer(DetectionCheckpointer(model, str(tmp), optimizer=opt), 3, max_to_keep=2),
        d2_hooks.CallbackHook(after_step=look("after_step"), after_train=look("after_train")),
    ]
    error = _outcome(lambda: runner(model, opt, hooks, start, stop))
    contents = {}
    for name in sorted(os.listdir(tmp)):
        if name.endswith(".pth"):
            data = torch.load(tmp / name, weights_only=False)
            contents[name] = (sorted(data), data["iteration"], {k: v.tolist() for k, v in data["model"].items()})
    last = (tmp / "last_checkpoint").read_text() if (tmp / "last_checkpoint").exists() else None
    return seen, contents, last, error


CHECKPOINT_CASES = {"from 0": (0, 10, None), "resumed": (4, 10, None), "model fails at iteration 7": (0, 10, 7)}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_checkpoint_files_match(case: str, tmp_path: Path) -> None:
    start, stop, model_fails = CHECKPOINT_CASES[case]
    runners = _runners(start)
    (tmp_path / "detectron2").mkdir()
    expected = _checkpoints(runners.pop("detectron2"), tmp_path / "detectron2", start, stop, model_fails)
    assert expected[1], "detectron2 wrote no checkpoint"
    for name, runner in runners.items():
        (tmp_path / name).mkdir()
        got = _checkpoints(runner, tmp_path / name, start, stop, model_fails)
        assert got[0] == expected[0], f"{name}: files present after each step"
        assert got[1] == expected[1], f"{name}: checkpoint keys, iteration and weights"
        assert got[2:] == expected[2:], f"{name}: last_checkpoint and exception"


def test_checkpoint_files_are_detectron2s_literally(tmp_path: Path) -> None:
    seen, contents, last, error = _checkpoints(_runners(0)["simple"], tmp_path, 0, 10, None)
    assert [(point, it, files) for point, it, files in seen if it in (2, 5, 8, 9, 10)] == [
        ("after_step", 2, ["last_checkpoint", "model_0000002.pth"]),
        ("after_step", 5, ["last_checkpoint", "model_0000002.pth", "model_0000005.pth"]),
        ("after_step", 8, ["last_checkpoint", "model_0000005.pth", "model_0000008.pth"]),
        ("after_step", 9, ["last_checkpoint", "model_0000005.pth", "model_0000008.pth", "model_final.pth"]),
        ("after_train", 10, ["last_checkpoint", "model_0000005.pth", "model_0000008.pth", "model_final.pth"]),
    ]
    assert {name: c[:2] for name, c in contents.items()} == {
        "model_0000005.pth": (["iteration", "model", "optimizer"], 5),
        "model_0000008.pth": (["iteration", "model", "optimizer"], 8),
        "model_final.pth": (["iteration", "model", "optimizer"], 9),
    }
    assert (last, error) == ("model_final.pth", None)

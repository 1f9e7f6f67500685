"""EvalHook: detectron2's evaluation points, result handling and metrics.json lines, under both entry points."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from d2lightning.engine import D2LightningModule, SimpleTrainer, hooks
from d2lightning.engine.hooks import eval_hook as eval_hook_module
from d2lightning.solver import build_lr_scheduler
from d2lightning.utils.events import JSONWriter
from tests.helpers.training import SimpleModel, infinite_loader, lightning_trainer, run

MODES = ["simple", "lightning"]


class CountingEval:
    """An eval function recording ``trainer.iter`` at each call and returning ``results(n)`` (n = call number)."""

    def __init__(self, results: Any = None) -> None:
        self.iters: list[int] = []
        self.results = results
        self.trainer: Any = None

    def __call__(self) -> Any:
        self.iters.append(self.trainer.iter)
        return self.results(len(self.iters)) if callable(self.results) else self.results


class _Via:
    """What the eval function sees as its trainer: the hook's (set when training starts)."""

    def __init__(self, hook: hooks.EvalHook) -> None:
        self.hook = hook

    @property
    def iter(self) -> int:
        return self.hook.trainer.iter


def counting_hook(period: int, results: Any = None, **kwargs: Any) -> tuple[hooks.EvalHook, CountingEval]:
    fn = CountingEval(results)
    hook = hooks.EvalHook(period, fn, **kwargs)
    fn.trainer = _Via(hook)
    return hook, fn


# ---------------------------------------------------------------- when it evaluates
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("max_iter", "period", "expected"), [(30, 15, 2), (31, 15, 3), (20, 0, 1)])
def test_eval_counts_match_detectron2(mode: str, max_iter: int, period: int, expected: int) -> None:
    hook, fn = counting_hook(period)
    run(mode, [hook], 0, max_iter)
    assert len(fn.iters) == expected


@pytest.mark.parametrize("mode", MODES)
def test_eval_iterations(mode: str) -> None:
    hook, fn = counting_hook(15)
    run(mode, [hook], 0, 31)
    assert fn.iters == [14, 29, 31]  # periodic in after_step (iter 14, 29), final in after_train (iter == max_iter)


@pytest.mark.parametrize("mode", MODES)
def test_no_final_eval_when_disabled_or_after_a_failure(mode: str) -> None:
    hook, fn = counting_hook(3, eval_after_train=False)
    run(mode, [hook], 0, 9)
    assert fn.iters == [2, 5]  # 8 is the last iteration: its evaluation belongs to after_train, which is off

    hook, fn = counting_hook(2)
    with pytest.raises(RuntimeError, match="model failed"):
        run(mode, [hook], 0, 10, model=SimpleModel(fail_at_call=5))
    assert fn.iters == [1, 3]  # the failed iteration 5 is not the end of training: no final evaluation


def test_function_is_dropped_after_training() -> None:
    hook, _ = counting_hook(0)
    run("simple", [hook], 0, 2)
    assert not hasattr(hook, "_func")


# ---------------------------------------------------------------- results
@pytest.mark.parametrize("mode", MODES)
def test_results_are_flattened_and_stored_without_smoothing(mode: str) -> None:
    results = {"ds1": {"bbox": {"AP": 1.5, "AP50": torch.tensor(2.0)}}, "ds2": {"segm": {"AP": 3}}, "top": 4.0}
    hook, _ = counting_hook(0, results)
    trainer = run(mode, [hook], 0, 3)
    latest = trainer.storage.latest()
    assert {k: v for k, v in latest.items() if "/" in k or k == "top"} == {
        "ds1/bbox/AP": (1.5, 3),
        "ds1/bbox/AP50": (2.0, 3),
        "ds2/segm/AP": (3.0, 3),
        "top": (4.0, 3),
    }
    hints = trainer.storage.smoothing_hints()
    assert [hints[k] for k in ("ds1/bbox/AP", "ds1/bbox/AP50", "ds2/segm/AP", "top")] == [False, False, False, False]


@pytest.mark.parametrize("mode", MODES)
def test_non_float_value_raises_detectron2_message(mode: str) -> None:
    hook, _ = counting_hook(0, {"bbox": {"AP": "n/a"}})
    message = "[EvalHook] eval_function should return a nested dict of float. Got 'bbox/AP: n/a' instead."
    with pytest.raises(ValueError, match=re.escape(message)):
        run(mode, [hook], 0, 2)


def test_truthy_non_dict_raises() -> None:
    hook, _ = counting_hook(0, [1.0])
    with pytest.raises(TypeError, match=re.escape("Eval function must return a dict. Got [1.0] instead.")):
        run("simple", [hook], 0, 2)


@pytest.mark.parametrize("mode", MODES)
def test_every_evaluation_ends_with_synchronize(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    barriers: list[int] = []
    hook, fn = counting_hook(2, lambda n: None if n == 1 else {"AP": n})  # a falsy result still synchronizes
    monkeypatch.setattr(eval_hook_module.comm, "synchronize", lambda: barriers.append(fn.iters[-1]))
    run(mode, [hook], 0, 5)
    assert barriers == [1, 3, 5]


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((-1, lambda: None), ValueError, "EvalHook eval_period must be an int >= 0, got -1"),
        ((2.5, lambda: None), ValueError, "EvalHook eval_period must be an int >= 0, got 2.5"),
        ((5, "not callable"), TypeError, "EvalHook eval_function must be callable, got 'not callable'"),
    ],
)
def test_arguments_are_validated(args: tuple, error: type, match: str) -> None:
    with pytest.raises(error, match=re.escape(match)):
        hooks.EvalHook(*args)


def test_lightning_callback_metrics_get_the_flat_results() -> None:
    hook, _ = counting_hook(2, lambda n: {"bbox": {"AP": 10.0 * n}})
    model = SimpleModel()
    module = D2LightningModule(model, infinite_loader(), torch.optim.SGD(model.parameters(), 0.1))
    pl_trainer = lightning_trainer(4, [hook])
    pl_trainer.fit(module)
    assert pl_trainer.callback_metrics["bbox/AP"] == torch.tensor(20.0)  # periodic at iter 1, final at 4


# ---------------------------------------------------------------- detectron2's hooked run (oracle)
ORACLE_TRAIN_KEYS = ["data_time", "iteration", "loss_a", "loss_b", "lr", "rank_data_time", "time", "total_loss"]
ORACLE_EVAL_KEYS = ["bbox/AP", "bbox/AP50", "iteration"]


def oracle_solver() -> Any:
    return OmegaConf.create(
        {
            "SOLVER": {
                "LR_SCHEDULER_NAME": "WarmupMultiStepLR",
                "MAX_ITER": 23,
                "BASE_LR": 0.1,
                "BASE_LR_END": 0.0,
                "GAMMA": 0.1,
                "STEPS": [12, 18],
                "NUM_DECAYS": 3,
                "WARMUP_FACTOR": 0.01,
                "WARMUP_ITERS": 4,
                "WARMUP_METHOD": "linear",
                "RESCALE_INTERVAL": False,
            }
        }
    )


@pytest.mark.parametrize("mode", MODES)
def test_detectron2_hooked_run_oracle(mode: str, tmp_path: Path) -> None:
    model = SimpleModel(two_losses=True)
    optimizer = torch.optim.SGD(model.parameters(), 0.1)
    scheduler = build_lr_scheduler(oracle_solver(), optimizer)
    ev, fn = counting_hook(8, lambda n: {"bbox": {"AP": 10.0 * n, "AP50": 20.0}})
    hook_list = [
        hooks.IterationTimer(),
        hooks.LRScheduler(optimizer, scheduler),
        ev,
        hooks.PeriodicWriter([JSONWriter(str(tmp_path / "metrics.json"))], period=5),
    ]
    if mode == "simple":
        trainer = SimpleTrainer(model, infinite_loader(), optimizer)
        trainer.register_hooks(hook_list)
        trainer.train(0, 23)
    else:
        lightning_trainer(23, hook_list).fit(D2LightningModule(model, infinite_loader(), optimizer))

    assert fn.iters == [7, 15, 23]
    lines = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [4, 9, 7, 14, 19, 15, 22, 23]
    assert [sorted(line) for line in lines] == [
        ORACLE_TRAIN_KEYS, ORACLE_TRAIN_KEYS, ORACLE_EVAL_KEYS, ORACLE_TRAIN_KEYS,
        ORACLE_TRAIN_KEYS, ORACLE_EVAL_KEYS, ORACLE_TRAIN_KEYS, ORACLE_EVAL_KEYS,
    ]  # fmt: skip
    assert [line.get("lr") for line in lines] == [
        0.1, 0.1, None, 0.010000000000000002, 0.0010000000000000002, None, 0.0010000000000000002, None,
    ]  # fmt: skip
    assert [line.get("bbox/AP") for line in lines] == [None, None, 10.0, None, None, 20.0, None, 30.0]
    assert [line.get("bbox/AP50") for line in lines] == [None, None, 20.0, None, None, 20.0, None, 20.0]

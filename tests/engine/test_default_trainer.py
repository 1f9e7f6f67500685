"""DefaultTrainer as detectron2's: build_hooks order, resume (exact), weights, auto_scale_workers, test(), results."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import pytest
import torch

from d2lightning.checkpoint import DetectionCheckpointer
from d2lightning.config import get_cfg
from d2lightning.engine import DefaultTrainer, HookBase, hooks
from d2lightning.engine.lightning.progress import IterationProgressBar
from d2lightning.engine.recipes.termination import SigtermCheckpoint
from d2lightning.evaluation import COCOEvaluator, DatasetEvaluator
from d2lightning.utils import comm
from d2lightning.utils.env import seed_all_rng
from tests.helpers.demo import TINY_VAL, TINY_VAL2, tiny_cfg

pytestmark = pytest.mark.usefixtures("d2_log", "one_thread")


class Trainer(DefaultTrainer):
    """detectron2's train_net.py Trainer: DefaultTrainer with the COCO evaluator."""

    @classmethod
    def build_evaluator(cls, cfg: Any, dataset_name: str) -> DatasetEvaluator:
        return COCOEvaluator(dataset_name)


class FailAt(HookBase):
    """Raises in ``after_step`` of iteration ``k`` (an interrupted run)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def after_step(self) -> None:
        if self.trainer.iter == self.k:
            raise RuntimeError(f"interrupted at iteration {self.k}")


class CountingEvaluator(DatasetEvaluator):
    """Counts the images it sees and reports ``{"bbox": {"AP": count + offset}}``."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset, self.count = offset, 0

    def reset(self) -> None:
        self.count = 0

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        self.count += len(inputs)

    def evaluate(self) -> dict[str, Any]:
        return {"bbox": {"AP": self.count + self.offset}}


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same_tensors(a: Mapping[str, Any], b: Mapping[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        elif isinstance(a[k], Mapping):
            _assert_same_tensors(a[k], b[k])
        else:
            assert a[k] == b[k], k


def _assert_same_optimizer_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys() and len(sa["state"]) > 0
    for k in sa["state"]:
        _assert_same_tensors(sa["state"][k], sb["state"][k])


# ---- construction and build_hooks ----------------------------------------------------------------


def test_build_hooks_order_is_detectron2s(tmp_path):
    trainer = Trainer(tiny_cfg(tmp_path, "LIGHTNING.PROGRESS_BAR", "True"))
    assert [type(h) for h in trainer._hooks] == [
        hooks.IterationTimer,
        hooks.LRScheduler,
        hooks.PeriodicCheckpointer,
        hooks.EvalHook,
        hooks.PeriodicWriter,
        IterationProgressBar,  # LIGHTNING.PROGRESS_BAR: a Lightning callback after the hooks
        SigtermCheckpoint,  # d2lightning: outside Slurm, SIGTERM stops with a checkpoint (last, after every hook)
    ]
    ckpt, evaluation, writer = trainer._hooks[2], trainer._hooks[3], trainer._hooks[4]
    assert ckpt.period == 3 and ckpt.max_to_keep is None and ckpt.checkpointer is trainer.checkpointer
    assert evaluation._period == 3
    assert writer._period == 20
    assert [type(w).__name__ for w in writer._writers] == ["CommonMetricPrinter", "JSONWriter", "TensorboardXWriter"]
    assert trainer.start_iter == 0 and trainer.max_iter == 6
    assert type(trainer._trainer).__name__ == "SimpleTrainer"


def test_build_hooks_with_precise_bn_and_off_the_main_process(tmp_path, monkeypatch):
    trainer = Trainer(tiny_cfg(tmp_path, "TEST.PRECISE_BN.ENABLED", "True"))
    assert [type(h) for h in trainer._hooks] == [
        hooks.IterationTimer,
        hooks.LRScheduler,
        hooks.PreciseBN,
        hooks.PeriodicCheckpointer,
        hooks.EvalHook,
        hooks.PeriodicWriter,
        SigtermCheckpoint,
    ]
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    trainer = Trainer(tiny_cfg(tmp_path, "TEST.PRECISE_BN.ENABLED", "True"))
    # as detectron2: the checkpointer hook and the writer on the main process only (the run gathers every rank's
    # RNG and data-stream states at the iterations it saves)
    assert [type(h) for h in trainer._hooks] == [
        hooks.IterationTimer,
        hooks.LRScheduler,
        hooks.PreciseBN,
        hooks.EvalHook,
        SigtermCheckpoint,
    ]


def test_amp_enabled_uses_amp_trainer(tmp_path):
    trainer = Trainer(tiny_cfg(tmp_path, "SOLVER.AMP.ENABLED", "True"))
    assert type(trainer._trainer).__name__ == "AMPTrainer"
    assert trainer._trainer.precision == torch.bfloat16  # on CPU


def test_model_data_loader_optimizer_read_and_write_through(tmp_path):
    """detectron2's test_default_trainer: the properties are the inner trainer's attributes."""
    trainer = Trainer(tiny_cfg(tmp_path))
    for name in ("model", "data_loader", "optimizer"):
        assert getattr(trainer, name) is getattr(trainer._trainer, name)
    model, loader = torch.nn.Linear(2, 2), [1, 2]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer.model, trainer.data_loader, trainer.optimizer = model, loader, optimizer
    assert trainer._trainer.model is model and trainer.model is model
    assert trainer._trainer.data_loader is loader and trainer.data_loader is loader
    assert trainer._trainer.optimizer is optimizer and trainer.optimizer is optimizer


# ---- training, checkpoints, resume -----------------------------------------------------------------


def test_train_returns_last_results_and_keeps_max_to_keep_checkpoints(tmp_path):
    cfg = tiny_cfg(
        tmp_path, "SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.CHECKPOINT_MAX_TO_KEEP", "2"
    )
    cfg.DATASETS.TEST = (TINY_VAL2,)
    trainer = Trainer(cfg)
    assert trainer._hooks[2].max_to_keep == 2
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    assert results is trainer._last_eval_results
    assert list(results) == ["bbox"] and "AP50" in results["bbox"]
    # periodic files at iterations 1, 3, 5, 7: only the newest two are kept; model_final is never deleted
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth")) == [
        "model_0000005.pth",
        "model_0000007.pth",
        "model_final.pth",
    ]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    # the evaluations of iterations 2, 5 and after the last one reached the storage
    assert trainer.storage.history("bbox/AP50").values()[-1][1] == 8


def _train_to_completion(output_dir, *opts: str) -> Trainer:
    seed_all_rng(0)
    trainer = Trainer(tiny_cfg(output_dir, *opts))
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer


@pytest.mark.parametrize(
    ("precise_bn", "accumulate"), [(False, 1), (True, 1), (False, 2)], ids=["plain", "precise_bn", "accumulate2"]
)
def test_interrupted_then_resumed_run_ends_with_the_same_weights(tmp_path, precise_bn, accumulate):
    opts = ("TEST.PRECISE_BN.ENABLED", str(precise_bn), "DATALOADER.NUM_WORKERS", "0")
    opts += ("LIGHTNING.ACCUMULATE_GRAD_BATCHES", str(accumulate))
    reference = _train_to_completion(tmp_path / "a", *opts)

    seed_all_rng(0)
    interrupted = Trainer(tiny_cfg(tmp_path / "b", *opts))
    interrupted.register_hooks([FailAt(4)])
    interrupted.resume_or_load(resume=False)
    with pytest.raises(RuntimeError, match="interrupted at iteration 4"):
        interrupted.train()
    assert (tmp_path / "b" / "last_checkpoint").read_text() == "model_0000002.pth"

    seed_all_rng(123)  # a different initialisation: everything must come from the checkpoint
    resumed = Trainer(tiny_cfg(tmp_path / "b", *opts))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
    assert resumed.scheduler.last_epoch == 3
    lr_at_3 = {it: lr for lr, it in reference.storage.history("lr").values()}[3]  # (value, iteration) pairs
    assert resumed.optimizer.param_groups[0]["lr"] == lr_at_3
    resumed.train()
    assert resumed.iter == 6
    _assert_same_tensors(_state(resumed.model), _state(reference.model))
    _assert_same_optimizer_state(resumed.optimizer, reference.optimizer)
    assert resumed.scheduler.state_dict() == reference.scheduler.state_dict()


def test_second_trainer_resumes_after_the_last_iteration_with_the_same_state(tmp_path):
    first = _train_to_completion(tmp_path)
    seed_all_rng(1)
    second = Trainer(tiny_cfg(tmp_path))
    second.resume_or_load(resume=True)
    assert second.start_iter == 6  # model_final.pth holds iteration 5
    assert second.iter == 5
    _assert_same_tensors(_state(second.model), _state(first.model))
    _assert_same_optimizer_state(second.optimizer, first.optimizer)
    assert second.scheduler.state_dict() == first.scheduler.state_dict()
    assert second.optimizer.param_groups[0]["lr"] == first.optimizer.param_groups[0]["lr"]


def test_model_weights_are_loaded_when_not_resuming(tmp_path, d2_log):
    seed_all_rng(0)
    source = Trainer(tiny_cfg(tmp_path / "src"))
    with torch.no_grad():
        for i, p in enumerate(source.model.parameters()):
            p.fill_(0.01 * i)
    DetectionCheckpointer(source.model, str(tmp_path / "src")).save("weights")
    weights = str(tmp_path / "src" / "weights.pth")
    expected = _state(source.model)

    # a checkpoint in OUTPUT_DIR is ignored without resume
    out = tmp_path / "out"
    _train_to_completion(out, "SOLVER.MAX_ITER", "1", "DATASETS.TEST", "()")
    seed_all_rng(1)
    trainer = Trainer(tiny_cfg(out, "MODEL.WEIGHTS", weights))
    trainer.resume_or_load(resume=False)
    assert trainer.start_iter == 0
    _assert_same_tensors(_state(trainer.model), expected)
    assert trainer.scheduler.last_epoch == 0  # only the weights: no trainer state

    # with resume, the checkpoint of OUTPUT_DIR wins over MODEL.WEIGHTS
    trainer = Trainer(tiny_cfg(out, "MODEL.WEIGHTS", weights))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 1
    assert not torch.equal(next(trainer.model.parameters()), next(iter(expected.values())))


def test_resume_without_a_checkpoint_starts_fresh_and_says_so_once(tmp_path, d2_log):
    trainer = Trainer(tiny_cfg(tmp_path))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 0 and trainer.iter == 0
    no_checkpoint = [m for m in d2_log.messages if "checkpoint" in m.lower()]
    assert no_checkpoint == [f"No checkpoint found in {tmp_path}: training starts at iteration 0, from scratch"]


def test_resume_without_a_checkpoint_loads_model_weights(tmp_path, d2_log):
    source = Trainer(tiny_cfg(tmp_path / "src"))
    DetectionCheckpointer(source.model, str(tmp_path / "src")).save("weights")
    weights = str(tmp_path / "src" / "weights.pth")
    seed_all_rng(1)
    trainer = Trainer(tiny_cfg(tmp_path / "out", "MODEL.WEIGHTS", weights))
    d2_log.messages.clear()
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 0
    _assert_same_tensors(_state(trainer.model), _state(source.model))
    assert d2_log.messages[0] == (
        f"No checkpoint found in {tmp_path / 'out'}: training starts at iteration 0, from MODEL.WEIGHTS={weights}"
    )
    assert sum("No checkpoint found" in m for m in d2_log.messages) == 1


def test_train_with_nothing_left_to_do_runs_no_iteration(tmp_path):
    first = _train_to_completion(tmp_path, "DATASETS.TEST", "()")
    trainer = Trainer(tiny_cfg(tmp_path, "DATASETS.TEST", "()"))
    trainer.resume_or_load(resume=True)
    before = _state(trainer.model)
    assert trainer.train() == {}
    _assert_same_tensors(_state(trainer.model), before)
    _assert_same_tensors(before, _state(first.model))


# ---- expected results --------------------------------------------------------------------------------


class _FixedResults(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg: Any, dataset_name: str) -> DatasetEvaluator:
        return CountingEvaluator(offset=40.0)  # 2 images: AP = 42


def test_expected_results_that_hold_return_the_results(tmp_path):
    cfg = tiny_cfg(tmp_path, "SOLVER.MAX_ITER", "1", "DATASETS.TEST", f"('{TINY_VAL2}',)")
    cfg.TEST.EXPECTED_RESULTS = [["bbox", "AP", 42.0, 0.01]]
    assert _FixedResults(cfg).train() == {"bbox": {"AP": 42.0}}


def test_expected_results_that_fail_exit_with_code_1(tmp_path, d2_log):
    cfg = tiny_cfg(tmp_path, "SOLVER.MAX_ITER", "1", "DATASETS.TEST", f"('{TINY_VAL2}',)")
    cfg.TEST.EXPECTED_RESULTS = [["bbox", "AP", 50.0, 0.01]]
    with pytest.raises(SystemExit) as info:
        _FixedResults(cfg).train()
    assert info.value.code == 1  # detectron2's verify_results exits
    assert "Result verification failed!" in d2_log.messages


def test_expected_results_without_any_evaluation_is_an_error(tmp_path):
    cfg = tiny_cfg(tmp_path, "SOLVER.MAX_ITER", "1", "DATASETS.TEST", f"('{TINY_VAL2}',)")
    cfg.TEST.EXPECTED_RESULTS = [["bbox", "AP", 42.0, 0.01]]
    trainer = _FixedResults(cfg)
    trainer._hooks = [h for h in trainer._hooks if not isinstance(h, hooks.EvalHook)]
    with pytest.raises(RuntimeError, match="No evaluation results obtained during training!"):
        trainer.train()


# ---- test() --------------------------------------------------------------------------------------------


@pytest.fixture
def two_test_sets(tmp_path):
    cfg = tiny_cfg(tmp_path, "DATASETS.TEST", f"('{TINY_VAL}', '{TINY_VAL2}')")
    return cfg, DefaultTrainer.build_model(cfg)


def test_test_with_one_evaluator_per_dataset(two_test_sets):
    cfg, model = two_test_sets
    results = DefaultTrainer.test(cfg, model, [CountingEvaluator(), CountingEvaluator(100.0)])
    assert results == {TINY_VAL: {"bbox": {"AP": 4.0}}, TINY_VAL2: {"bbox": {"AP": 102.0}}}
    assert list(results) == [TINY_VAL, TINY_VAL2]


def test_test_with_a_single_evaluator_and_a_single_dataset_returns_its_results(tmp_path):
    cfg = tiny_cfg(tmp_path)
    model = DefaultTrainer.build_model(cfg)
    assert DefaultTrainer.test(cfg, model, CountingEvaluator()) == {"bbox": {"AP": 4.0}}


def test_test_evaluator_count_mismatch(two_test_sets):
    cfg, model = two_test_sets
    with pytest.raises(ValueError, match=r"2 test datasets \(DATASETS.TEST\) but 1 evaluators given"):
        DefaultTrainer.test(cfg, model, [CountingEvaluator()])
    with pytest.raises(ValueError, match="2 test datasets"):
        DefaultTrainer.test(cfg, model, CountingEvaluator())  # a single evaluator is a list of one


def test_test_without_build_evaluator_warns_and_gives_empty_results(two_test_sets, d2_log):
    cfg, model = two_test_sets
    assert DefaultTrainer.test(cfg, model) == {TINY_VAL: {}, TINY_VAL2: {}}
    warning = "No evaluator found. Use `DefaultTrainer.test(evaluators=)`, or implement its `build_evaluator` method."
    assert d2_log.messages.count(warning) == 2


def test_test_uses_build_evaluator_and_checks_the_result_type(two_test_sets):
    cfg, model = two_test_sets

    class WithEvaluator(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg: Any, dataset_name: str) -> DatasetEvaluator:
            return CountingEvaluator(offset=len(dataset_name))

    assert WithEvaluator.test(cfg, model) == {TINY_VAL: {"bbox": {"AP": 19.0}}, TINY_VAL2: {"bbox": {"AP": 18.0}}}

    class NotADict(CountingEvaluator):
        def evaluate(self) -> Any:
            return [1.0]

    with pytest.raises(TypeError, match=r"Evaluator must return a dict on the main process. Got \[1.0\]"):
        DefaultTrainer.test(cfg, model, [NotADict(), NotADict()])


# ---- auto_scale_workers --------------------------------------------------------------------------------


def _scaling_cfg() -> Any:
    """detectron2's docstring example, plus warmup and eval period."""
    cfg = get_cfg()
    cfg.SOLVER.IMS_PER_BATCH = 16
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 8
    cfg.SOLVER.MAX_ITER = 5000
    cfg.SOLVER.WARMUP_ITERS = 1000
    cfg.SOLVER.STEPS = (4000,)
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.TEST.EVAL_PERIOD = 1000
    return cfg


@pytest.mark.parametrize(
    ("workers", "expected"),
    [
        (16, {"IMS_PER_BATCH": 32, "BASE_LR": 0.2, "MAX_ITER": 2500, "WARMUP_ITERS": 500, "STEPS": (2000,),
              "CHECKPOINT_PERIOD": 500, "EVAL_PERIOD": 500, "REFERENCE_WORLD_SIZE": 16}),
        (4, {"IMS_PER_BATCH": 8, "BASE_LR": 0.05, "MAX_ITER": 10000, "WARMUP_ITERS": 2000, "STEPS": (8000,),
             "CHECKPOINT_PERIOD": 2000, "EVAL_PERIOD": 2000, "REFERENCE_WORLD_SIZE": 4}),
        (3, {"IMS_PER_BATCH": 6, "BASE_LR": 0.0375, "MAX_ITER": 13333, "WARMUP_ITERS": 2667, "STEPS": (10667,),
             "CHECKPOINT_PERIOD": 2667, "EVAL_PERIOD": 2667, "REFERENCE_WORLD_SIZE": 3}),
    ],
)  # fmt: skip
def test_auto_scale_workers_numbers(workers, expected):
    cfg = _scaling_cfg()
    cfg.freeze()
    scaled = DefaultTrainer.auto_scale_workers(cfg, workers)
    got = {
        "IMS_PER_BATCH": scaled.SOLVER.IMS_PER_BATCH,
        "BASE_LR": scaled.SOLVER.BASE_LR,
        "MAX_ITER": scaled.SOLVER.MAX_ITER,
        "WARMUP_ITERS": scaled.SOLVER.WARMUP_ITERS,
        "STEPS": tuple(scaled.SOLVER.STEPS),
        "CHECKPOINT_PERIOD": scaled.SOLVER.CHECKPOINT_PERIOD,
        "EVAL_PERIOD": scaled.TEST.EVAL_PERIOD,
        "REFERENCE_WORLD_SIZE": scaled.SOLVER.REFERENCE_WORLD_SIZE,
    }
    assert got.pop("STEPS") == expected.pop("STEPS")
    assert got == pytest.approx(expected)
    assert scaled.is_frozen()
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.REFERENCE_WORLD_SIZE == 8  # the input is not changed


def test_auto_scale_workers_no_op_and_errors():
    cfg = _scaling_cfg()
    assert DefaultTrainer.auto_scale_workers(cfg, 8) is cfg
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 0
    assert DefaultTrainer.auto_scale_workers(cfg, 16) is cfg
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 3
    with pytest.raises(
        ValueError, match=r"SOLVER\.IMS_PER_BATCH=16 must be divisible by SOLVER\.REFERENCE_WORLD_SIZE=3"
    ):
        DefaultTrainer.auto_scale_workers(cfg, 6)
    assert not DefaultTrainer.auto_scale_workers(_scaling_cfg(), 4).is_frozen()


def test_test_refuses_results_that_are_not_numbers(two_test_sets):
    cfg, model = two_test_sets

    class Text(CountingEvaluator):
        def evaluate(self) -> Any:
            return {"bbox": {"AP": 1, "AP50": "high"}}

    message = f"The evaluator of {TINY_VAL} should return a nested dict of float. Got 'bbox/AP50: high' instead."
    with pytest.raises(ValueError, match=re.escape(message)):
        DefaultTrainer.test(cfg, model, [Text(), Text()])


def test_evalhook_refuses_non_numbers_from_an_overridden_test(tmp_path):
    """A user ``test()`` that bypasses the check still meets EvalHook's (detectron2's) error."""

    class OwnTest(DefaultTrainer):
        @classmethod
        def test(cls, cfg: Any, model: Any, evaluators: Any = None) -> dict[str, Any]:
            return {"bbox": {"AP": "n/a"}}

    trainer = OwnTest(tiny_cfg(tmp_path, "SOLVER.MAX_ITER", "1"))
    message = "[EvalHook] eval_function should return a nested dict of float. Got 'bbox/AP: n/a' instead."
    with pytest.raises(ValueError, match=re.escape(message)):
        trainer.train()


def test_progress_bar_total_and_initial_on_a_resumed_run(tmp_path, capsys):
    _train_to_completion(tmp_path, "SOLVER.MAX_ITER", "4", "DATASETS.TEST", "()")
    trainer = Trainer(tiny_cfg(tmp_path, "LIGHTNING.PROGRESS_BAR", "True", "DATASETS.TEST", "()"))
    trainer.resume_or_load(resume=True)
    trainer.train()
    (bar,) = [h for h in trainer._hooks if isinstance(h, IterationProgressBar)]
    assert bar.total_train_batches == 6
    assert (bar.train_progress_bar.total, bar.train_progress_bar.initial, bar.train_progress_bar.n) == (6, 4, 6)
    assert "4/6 [" in capsys.readouterr().out

"""Tests for d2lightning.evaluation.evaluator (detectron2 ``evaluation/evaluator.py``)."""

from __future__ import annotations

import functools
import logging
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

import d2lightning.evaluation.evaluator as evaluator_module
from d2lightning.evaluation import (
    DatasetEvaluator,
    DatasetEvaluators,
    inference_context,
    inference_on_dataset,
)

LOGGER = "d2lightning.evaluation"


class RecordingModel(nn.Module):
    """Returns one output per input and records mode, grad state and calls."""

    def __init__(self, log: list[str] | None = None, fail_at: int | None = None) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)
        self.log = log if log is not None else []
        self.fail_at = fail_at
        self.seen: list[tuple[bool, bool]] = []  # (training, grad enabled) per call

    def forward(self, inputs: list[int]) -> list[dict[str, int]]:
        if self.fail_at is not None and len(self.seen) == self.fail_at:
            raise RuntimeError("boom")
        self.seen.append((self.training, torch.is_grad_enabled()))
        self.log.append("forward")
        return [{"x": i} for i in inputs]


class RecordingEvaluator(DatasetEvaluator):
    def __init__(self, log: list[str], result: dict[str, Any] | None) -> None:
        self.log = log
        self.result = result
        self.processed: list[Any] = []

    def reset(self) -> None:
        self.log.append("reset")
        self.processed = []

    def process(self, inputs: Any, outputs: Any) -> None:
        self.log.append("process")
        self.processed.append((inputs, outputs))

    def evaluate(self) -> dict[str, Any] | None:
        self.log.append("evaluate")
        return self.result


class FakeClock:
    """A perf_counter that moves only when the model runs (``tick`` seconds per forward)."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


def test_model_runs_in_eval_mode_without_grad_and_mode_is_restored() -> None:
    model = RecordingModel()
    model.train()
    inference_on_dataset(model, [[1], [2]], None)
    assert model.seen == [(False, False), (False, False)]
    assert model.training is True
    assert torch.is_grad_enabled() is True


def test_eval_mode_model_stays_in_eval_mode() -> None:
    model = RecordingModel().eval()
    inference_on_dataset(model, [[1]], None)
    assert model.training is False


def test_mode_restored_when_model_raises() -> None:
    model = RecordingModel(fail_at=1).train()
    with pytest.raises(RuntimeError, match="boom"):
        inference_on_dataset(model, [[1], [2], [3]], None)
    assert model.seen == [(False, False)]
    assert model.training is True
    assert torch.is_grad_enabled() is True


def test_inference_context_restores_mode_on_error() -> None:
    model = RecordingModel().train()
    with pytest.raises(ValueError, match="inside"), inference_context(model):
        assert model.training is False
        raise ValueError("inside")
    assert model.training is True


def test_callbacks_and_evaluator_calls_are_in_detectron2_order() -> None:
    log: list[str] = []
    callbacks = {name: functools.partial(log.append, name) for name in evaluator_module.CALLBACK_NAMES}
    evaluator = RecordingEvaluator(log, {"task": {"m": 1.0}})
    result = inference_on_dataset(RecordingModel(log), [[1], [2]], evaluator, callbacks=callbacks)
    assert result == {"task": {"m": 1.0}}
    assert log == [
        "reset",
        "on_start",
        "before_inference",
        "forward",
        "after_inference",
        "process",
        "before_inference",
        "forward",
        "after_inference",
        "process",
        "on_end",
        "evaluate",
    ]
    assert evaluator.processed == [([1], [{"x": 1}]), ([2], [{"x": 2}])]


def test_none_result_becomes_empty_dict() -> None:
    evaluator = RecordingEvaluator([], None)
    assert inference_on_dataset(RecordingModel(), [[1]], evaluator) == {}


def test_none_evaluator_only_runs_the_model() -> None:
    model = RecordingModel()
    assert inference_on_dataset(model, [[1], [2], [3]], None) == {}
    assert len(model.seen) == 3


def test_plain_callable_model_is_supported() -> None:
    evaluator = RecordingEvaluator([], {"t": {"n": 2.0}})
    out = inference_on_dataset(lambda inputs: [i * 10 for i in inputs], [[1], [2]], evaluator)
    assert out == {"t": {"n": 2.0}}
    assert evaluator.processed == [([1], [10]), ([2], [20])]


def test_evaluator_list_is_merged() -> None:
    log: list[str] = []
    evaluators = [
        RecordingEvaluator(log, {"bbox": {"AP": 1.0}}),
        RecordingEvaluator(log, {"segm": {"AP": 2.0}}),
    ]
    result = inference_on_dataset(RecordingModel(), [[1]], evaluators)
    assert result == {"bbox": {"AP": 1.0}, "segm": {"AP": 2.0}}
    assert log == ["reset", "reset", "process", "process", "evaluate", "evaluate"]


def test_duplicate_result_keys_raise_naming_the_key() -> None:
    evaluators = DatasetEvaluators([RecordingEvaluator([], {"bbox": {}}), RecordingEvaluator([], {"bbox": {}})])
    with pytest.raises(ValueError, match="same key 'bbox'"):
        evaluators.evaluate()


def test_dataset_evaluators_skip_none_results() -> None:
    evaluators = DatasetEvaluators([RecordingEvaluator([], None), RecordingEvaluator([], {"a": 1})])
    assert evaluators.evaluate() == {"a": 1}


def test_dataset_evaluators_reject_non_evaluators() -> None:
    with pytest.raises(TypeError, match=r"evaluators\[1\].*int"):
        DatasetEvaluators([DatasetEvaluator(), 3])


def test_loader_without_len_raises_clear_error() -> None:
    loader = (x for x in [[1], [2]])
    with pytest.raises(TypeError, match=r"len\(data_loader\).*generator"):
        inference_on_dataset(RecordingModel(), loader, None)


def test_unknown_callback_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="'after_batch'"):
        inference_on_dataset(RecordingModel(), [[1]], None, callbacks={"after_batch": lambda: None})


def test_bad_evaluator_is_rejected() -> None:
    with pytest.raises(TypeError, match="evaluator must be a DatasetEvaluator"):
        inference_on_dataset(RecordingModel(), [[1]], object())  # type: ignore[arg-type]


def test_base_evaluator_returns_empty_dict_through_inference() -> None:
    assert inference_on_dataset(RecordingModel(), [[1]], DatasetEvaluator()) == {}


def _timed_run(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, n: int, tick: float) -> list[str]:
    clock = FakeClock()
    monkeypatch.setattr(evaluator_module, "time", SimpleNamespace(perf_counter=clock.perf_counter))

    def model(inputs: list[int]) -> list[int]:
        clock.now += tick
        return inputs

    with caplog.at_level(logging.INFO, logger=LOGGER):
        inference_on_dataset(model, [[i] for i in range(n)], None)
    return [r.getMessage() for r in caplog.records]


def test_warmup_batches_are_excluded_from_timing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # 8 batches of 1 s: the first min(5, 8 - 1) = 5 are warm-up, so 3 batches / 3 s are timed
    messages = _timed_run(monkeypatch, caplog, n=8, tick=1.0)
    assert messages == [
        "Start inference on 8 batches",
        "Total inference time: 0:00:03 (1.000000 s / iter per device, on 1 devices)",
        "Total inference pure compute time: 0:00:03 (1.000000 s / iter per device, on 1 devices)",
    ]


def test_short_loader_warms_up_on_all_but_one_batch(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # 3 batches of 2 s: min(5, 3 - 1) = 2 warm-up batches, one 2 s batch timed
    messages = _timed_run(monkeypatch, caplog, n=3, tick=2.0)
    assert messages[1] == "Total inference time: 0:00:02 (2.000000 s / iter per device, on 1 devices)"


def test_slow_batches_log_progress_in_detectron2_format(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # 6 s per batch (> 5 s) logs progress from the first batch; 5 s apart, so every batch logs
    messages = _timed_run(monkeypatch, caplog, n=2, tick=6.0)
    assert messages[1:3] == [
        "Inference done 1/2. Dataloading: 0.0000 s/iter. Inference: 6.0000 s/iter. Eval: 0.0000 s/iter. "
        "Total: 6.0000 s/iter. ETA=0:00:06",
        "Inference done 2/2. Dataloading: 0.0000 s/iter. Inference: 6.0000 s/iter. Eval: 0.0000 s/iter. "
        "Total: 6.0000 s/iter. ETA=0:00:00",
    ]


def test_real_clock_log_line_format(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        inference_on_dataset(RecordingModel(), [[1], [2]], None)
    total_line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Total inference time")]
    assert len(total_line) == 1
    assert total_line[0].endswith(" s / iter per device, on 1 devices)")
    assert all(r.name.startswith(LOGGER + ".") for r in caplog.records)


def test_empty_loader_still_evaluates() -> None:
    evaluator = RecordingEvaluator([], {"t": {"n": 0.0}})
    assert inference_on_dataset(RecordingModel(), [], evaluator) == {"t": {"n": 0.0}}


@pytest.mark.parametrize(("initialized", "expected_syncs"), [(True, 3), (False, 0)])
def test_cuda_synchronize_only_when_cuda_is_in_use(
    monkeypatch: pytest.MonkeyPatch, initialized: bool, expected_syncs: int
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: initialized)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: calls.append(1))
    inference_on_dataset(lambda inputs: inputs, [[1], [2], [3]], None)
    assert len(calls) == expected_syncs

"""Tests for d2lightning.evaluation.testing (detectron2 ``evaluation/testing.py``)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from omegaconf import OmegaConf

from d2lightning.evaluation import flatten_results_dict, print_csv_format, verify_results

LOGGER = "d2lightning.evaluation"
RESULTS = {"bbox": {"AP": 50.123456, "AP50": 100.0, "APs": float("nan"), "AP-cat": 12.0}, "loss": 1.5}


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_print_csv_format_lines(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        print_csv_format(RESULTS)
    assert _messages(caplog) == [
        "copypaste: Task: bbox",
        "copypaste: AP,AP50,APs",
        "copypaste: 50.1235,100.0000,nan",
        "copypaste: loss=1.5",
    ]


def test_print_csv_format_rejects_non_mapping() -> None:
    with pytest.raises(TypeError, match="list"):
        print_csv_format([1, 2])  # type: ignore[arg-type]


def _cfg(expected: list[Any], kind: str) -> Any:
    if kind == "dict":
        return {"TEST": {"EXPECTED_RESULTS": expected}}
    if kind == "attr":
        return SimpleNamespace(TEST=SimpleNamespace(EXPECTED_RESULTS=expected))
    return OmegaConf.create({"TEST": {"EXPECTED_RESULTS": expected}})


@pytest.mark.parametrize("kind", ["dict", "attr", "omegaconf"])
def test_verify_results_passes_within_tolerance(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _cfg([["bbox", "AP", 50.0, 0.2], ["bbox", "AP50", 100.0, 0.0]], kind)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert verify_results(cfg, RESULTS) is True
    assert _messages(caplog) == ["Results verification passed."]


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (["bbox", "AP", 50.0, 0.1], "bbox/AP = 50.123456, expected 50.0 +- 0.1"),
        (["bbox", "AR", 1.0, 1.0], "metric bbox/AR is missing"),
        (["bbox", "APs", 1.0, 1.0], "bbox/APs = nan is not finite"),
        (["segm", "AP", 1.0, 1.0], "task 'segm' is missing"),
    ],
)
def test_verify_results_fails_and_logs(entry: list[Any], reason: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert verify_results(_cfg([entry], "dict"), RESULTS) is False
    messages = _messages(caplog)
    assert messages[0] == "Result verification failed!"
    assert reason in messages[1]
    assert messages[2].startswith("Expected Results: ")
    assert messages[3].startswith("Actual Results: ")
    assert all(r.levelno == logging.ERROR for r in caplog.records)


def test_verify_results_empty_expectations_pass_silently(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert verify_results(_cfg([], "dict"), {}) is True
    assert _messages(caplog) == []


def test_verify_results_rejects_malformed_entry() -> None:
    with pytest.raises(ValueError, match=r"EXPECTED_RESULTS\[0\].*\[task, metric, expected, tolerance\]"):
        verify_results(_cfg([["bbox", "AP", 1.0]], "dict"), RESULTS)


def test_verify_results_needs_the_config_key() -> None:
    with pytest.raises(ValueError, match=r"TEST\.EXPECTED_RESULTS"):
        verify_results({"TEST": {}}, RESULTS)


def test_flatten_results_dict() -> None:
    nested = {"ds1": {"bbox": {"AP": 1.0, "AP50": 2.0}}, "ds2": {"bbox": {"AP": 3.0}}, "time": 4.0}
    assert flatten_results_dict(nested) == {
        "ds1/bbox/AP": 1.0,
        "ds1/bbox/AP50": 2.0,
        "ds2/bbox/AP": 3.0,
        "time": 4.0,
    }


def test_flatten_results_dict_rejects_non_mapping() -> None:
    with pytest.raises(TypeError, match="str"):
        flatten_results_dict("bbox")  # type: ignore[arg-type]

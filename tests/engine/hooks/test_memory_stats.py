"""TorchMemoryStats: silent without CUDA; with CUDA (mocked) max_runs reports at the writer's points."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from d2lightning.engine import hooks
from tests.helpers.training import run

MODES = ["simple", "lightning"]
LOGGER = "d2lightning.engine.hooks.torch_memory_stats"
MB = 1024 * 1024


@pytest.mark.parametrize("mode", MODES)
def test_is_a_no_op_without_cuda(mode: str, caplog: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: pytest.fail("must not touch CUDA"))
    caplog.set_level(logging.INFO, logger=LOGGER)
    run(mode, [hooks.TorchMemoryStats(period=1)], 0, 4)
    assert [r for r in caplog.records if r.name == LOGGER] == []


def test_logs_max_runs_reports_with_cuda(caplog: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    resets: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda: 300 * MB)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda: 200 * MB)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 150 * MB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 100.4 * MB)
    monkeypatch.setattr(torch.cuda, "memory_summary", lambda: "SUMMARY")
    caplog.set_level(logging.INFO, logger=LOGGER)
    hook = hooks.TorchMemoryStats(period=5, max_runs=3)
    hook.trainer = trainer = SimpleNamespace(iter=0, max_iter=23)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: resets.append(trainer.iter))
    for it in range(23):
        trainer.iter = it
        hook.after_step()

    def line(it: int) -> str:
        return f" iter: {it}  max_reserved_mem: 300MB  reserved_mem: 200MB  max_allocated_mem: 150MB  allocated_mem: 100MB "

    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [line(4), line(9), line(14), "\nSUMMARY"]
    assert resets == [4, 9, 14]  # exactly max_runs reports (detectron2's hook makes one more)


def test_reports_after_the_last_iteration() -> None:
    hook = hooks.TorchMemoryStats(period=20, max_runs=0)
    hook.trainer = SimpleNamespace(iter=6, max_iter=7)
    hook.after_step()  # max_runs=0: nothing, and no CUDA call on this CPU machine either
    assert hook._runs == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"period": 0}, "TorchMemoryStats period must be an int >= 1, got 0"),
        ({"max_runs": -1}, "TorchMemoryStats max_runs must be an int >= 0, got -1"),
    ],
)
def test_arguments_are_validated(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        hooks.TorchMemoryStats(**kwargs)

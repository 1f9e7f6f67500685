"""TorchProfiler and AutogradProfiler: one trace per profiled iteration, nothing for the others."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from d2lightning.engine import hooks
from tests.helpers.training import SimpleModel, run

MODES = ["simple", "lightning"]


def profiled(trainer) -> bool:  # type: ignore[no-untyped-def]
    return trainer.iter in (1, 3)


def assert_chrome_trace(path: Path) -> None:
    trace = json.loads(path.read_text())
    assert isinstance(trace["traceEvents"], list)
    assert len(trace["traceEvents"]) > 0
    assert any(event.get("ph") == "X" for event in trace["traceEvents"])  # complete (timed) events


@pytest.mark.parametrize("mode", MODES)
def test_torch_profiler_writes_a_chrome_trace_per_profiled_iteration(mode: str, tmp_path: Path) -> None:
    out = tmp_path / "out"  # created on first use
    run(mode, [hooks.TorchProfiler(profiled, out, save_tensorboard=False)], 0, 5)
    assert sorted(p.name for p in out.iterdir()) == ["profiler-trace-iter1.json", "profiler-trace-iter3.json"]
    for path in out.iterdir():
        assert_chrome_trace(path)


def test_torch_profiler_writes_tensorboard_traces(tmp_path: Path) -> None:
    run("lightning", [hooks.TorchProfiler(profiled, tmp_path)], 0, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log"]
    log = tmp_path / "log"
    assert sorted(p.name for p in log.iterdir()) == ["profiler-tensorboard-iter1", "profiler-tensorboard-iter3"]
    for d in log.iterdir():
        (trace,) = d.iterdir()
        assert re.fullmatch(r"worker0\.\d+\.pt\.trace\.json", trace.name)
        assert_chrome_trace(trace)


@pytest.mark.parametrize("mode", MODES)
def test_autograd_profiler_is_deprecated_and_writes_chrome_traces(mode: str, tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match="AutogradProfiler is deprecated in favor of TorchProfiler"):
        hook = hooks.AutogradProfiler(profiled, tmp_path, use_cuda=True)  # CPU only here: CUDA is left out
    run(mode, [hook], 0, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["profiler-trace-iter1.json", "profiler-trace-iter3.json"]
    for path in tmp_path.iterdir():
        assert_chrome_trace(path)


def test_a_failed_profiled_step_closes_the_profiler_without_a_trace(tmp_path: Path) -> None:
    hook = hooks.TorchProfiler(lambda t: True, tmp_path, save_tensorboard=False)
    with pytest.raises(RuntimeError, match="model failed"):
        run("lightning", [hook], 0, 5, model=SimpleModel(fail_at_call=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["profiler-trace-iter0.json"]
    assert hook._profiler is None


def test_profiler_arguments_are_validated(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=re.escape(f"TorchProfiler output_dir '{blocker}/sub' cannot be created")):
        hooks.TorchProfiler(profiled, blocker / "sub")
    with pytest.raises(TypeError, match="TorchProfiler enable_predicate must be callable"):
        hooks.TorchProfiler(True, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="TorchProfiler output_dir must be a non-empty path"):
        hooks.TorchProfiler(profiled, None)  # type: ignore[arg-type]
    with (
        pytest.warns(DeprecationWarning),
        pytest.raises(ValueError, match=re.escape(f"AutogradProfiler output_dir '{blocker}' cannot be created")),
    ):
        hooks.AutogradProfiler(profiled, blocker)

"""EventStorage, HistoryBuffer and the writers, with detectron2's own test cases (tests/test_events.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from d2lightning.utils.events import (
    CommonMetricPrinter,
    EventStorage,
    JSONWriter,
    TensorboardXWriter,
    get_event_storage,
    has_event_storage,
)
from d2lightning.utils.history_buffer import HistoryBuffer


def _read_json(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_storage_context_stack() -> None:
    assert not has_event_storage()
    with pytest.raises(RuntimeError, match=r"has to be called inside a 'with EventStorage\(\.\.\.\)' context"):
        get_event_storage()
    with EventStorage(5) as outer:
        assert get_event_storage() is outer and outer.iter == 5 and outer.iteration == 5
        with EventStorage() as inner:
            assert get_event_storage() is inner
        assert get_event_storage() is outer
    assert not has_event_storage()


def test_put_scalar_stamps_iteration_scope_and_hint() -> None:
    with EventStorage(3) as s:
        s.put_scalar("a", torch.tensor(2.0))
        s.put_scalar("a", 4, cur_iter=7)
        with s.name_scope("val/"):
            s.put_scalars(b=1.0, c=2.0, smoothing_hint=False)
            with s.name_scope("test"):  # scopes replace each other
                s.put_scalar("d", 1.0)
        s.put_scalar("e", 1.0)
        assert s.latest() == {
            "a": (4.0, 7),
            "val/b": (1.0, 3),
            "val/c": (2.0, 3),
            "test/d": (1.0, 3),
            "e": (1.0, 3),
        }
        assert s.smoothing_hints()["val/b"] is False
        with pytest.raises(AssertionError, match="Scalar a was put with a different smoothing_hint!"):
            s.put_scalar("a", 1.0, smoothing_hint=False)
        with pytest.raises(KeyError, match="No history metric available for nope!"):
            s.history("nope")
        s.step()
        assert s.iter == 4
        s.iter = 10.0  # type: ignore[assignment]
        assert s.iter == 10 and isinstance(s.iter, int)


def test_history_buffer_statistics() -> None:
    buf = HistoryBuffer(max_length=3)
    for i, v in enumerate([1.0, 2.0, 10.0, 4.0]):
        buf.update(v, i)
    assert list(buf.values()) == [(2.0, 1), (10.0, 2), (4.0, 3)]
    assert buf.latest() == 4.0
    assert buf.median(3) == 4.0
    assert buf.avg(2) == 7.0
    assert buf.global_avg() == pytest.approx(17.0 / 4)  # over every value ever added
    with pytest.raises(ValueError, match="max_length must be >= 1, got 0"):
        HistoryBuffer(0)


def test_json_writer_scalar(tmp_path: Path) -> None:
    # detectron2 testScalar
    path = tmp_path / "test.json"
    with EventStorage() as storage:
        writer = JSONWriter(path)
        for k in range(60):
            storage.put_scalar("key", k, smoothing_hint=False)
            if (k + 1) % 20 == 0:
                writer.write()
            storage.step()
        writer.close()
    assert [int(d["key"]) for d in _read_json(path)] == [19, 39, 59]


def test_json_writer_mismatched_period(tmp_path: Path) -> None:
    # detectron2 testScalarMismatchedPeriod: key2 every 17 iterations, key every iteration, write every 20
    path = tmp_path / "test.json"
    with EventStorage() as storage:
        writer = JSONWriter(path)
        for k in range(60):
            if k % 17 == 0:
                storage.put_scalar("key2", k, smoothing_hint=False)
            storage.put_scalar("key", k, smoothing_hint=False)
            if (k + 1) % 20 == 0:
                writer.write()
            storage.step()
        writer.close()
    data = _read_json(path)
    assert [int(d.get("key2", 0)) for d in data] == [17, 0, 34, 0, 51, 0]
    assert [int(d.get("key", 0)) for d in data] == [0, 19, 0, 39, 0, 59]
    assert [d["iteration"] for d in data] == [17, 19, 34, 39, 51, 59]


def test_json_writer_smoothing_window(tmp_path: Path) -> None:
    # detectron2 testSmoothingWithWindowSize
    path = tmp_path / "test.json"
    with EventStorage() as storage:
        writer = JSONWriter(path, window_size=10)
        for k in range(20):
            storage.put_scalar("key1", k, smoothing_hint=True)
            if (k + 1) % 2 == 0:
                storage.put_scalar("key2", k, smoothing_hint=True)
            if (k + 1) % 5 == 0:
                storage.put_scalar("key3", k, smoothing_hint=True)
            if (k + 1) % 10 == 0:
                writer.write()
            storage.step()
        assert {k: storage.count_samples(k, 10) for k in ("key1", "key2", "key3")} == {
            "key1": 10,
            "key2": 5,
            "key3": 2,
        }
        writer.close()
    data = _read_json(path)
    assert [d["key1"] for d in data] == [4.5, 14.5]
    assert [d["key2"] for d in data] == [5, 15]
    assert [d["key3"] for d in data] == [6.5, 16.5]


def test_json_writer_appends_and_sorts_keys(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    for _ in range(2):
        with EventStorage() as storage:
            storage.put_scalars(b=1.0, a=2.0)
            writer = JSONWriter(path)
            writer.write()
            writer.close()
    lines = path.read_text().splitlines()
    assert lines == ['{"a": 2.0, "b": 1.0, "iteration": 0}'] * 2


def test_json_writer_unwritable_path_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "missing-dir" / "metrics.json"
    with pytest.raises(OSError, match=r"JSONWriter cannot open '.*missing-dir/metrics.json' for appending"):
        JSONWriter(bad)


def test_printer_eta(caplog: pytest.LogCaptureFixture) -> None:
    # detectron2 testPrintETA
    with EventStorage() as s:
        p1 = CommonMetricPrinter(10)
        p2 = CommonMetricPrinter()
        s.put_scalar("time", 1.0)
        s.step()
        s.put_scalar("time", 1.0)
        s.step()
        with caplog.at_level(logging.INFO, logger="d2lightning.utils.events"):
            p1.write()
            assert "eta" in caplog.records[-1].getMessage()
            p2.write()
            assert "eta" not in caplog.records[-1].getMessage()
        assert s.latest()["eta_seconds"] == (7.0, 2)  # median(time)=1 s x (10 - 2 - 1) iterations left


def test_printer_line_format(caplog: pytest.LogCaptureFixture) -> None:
    with EventStorage(19) as s:
        s.put_scalars(total_loss=0.5, loss_cls=0.25, time=0.1, data_time=0.002)
        s.put_scalar("lr", 0.02, smoothing_hint=False)
        s.put_scalar("[metric]grad_scaler", 1024.0)
        s.put_scalar("unrelated", 3.0)
        with caplog.at_level(logging.INFO, logger="d2lightning.utils.events"):
            CommonMetricPrinter(max_iter=100).write()
    line = caplog.records[-1].getMessage()
    assert line == (
        " eta: 0:00:08  iter: 19  total_loss: 0.5  loss_cls: 0.25  [metric]grad_scaler: 1024  time: 0.1000  "
        "last_time: 0.1000  data_time: 0.0020  last_data_time: 0.0020  lr: 0.02"
    )


def test_printer_silent_at_max_iter(caplog: pytest.LogCaptureFixture) -> None:
    with EventStorage(10) as s, caplog.at_level(logging.INFO, logger="d2lightning.utils.events"):
        s.put_scalar("total_loss", 1.0)
        CommonMetricPrinter(max_iter=10).write()
    assert caplog.records == []


def test_tensorboard_writer_writes_scalars_images_histograms(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with EventStorage() as s:
        writer = TensorboardXWriter(str(tmp_path), window_size=1)
        for it in range(3):
            s.put_scalar("loss", float(it))
            s.step()
        s.put_image("img", torch.zeros(3, 4, 4))
        s.put_histogram("w", torch.arange(10.0), bins=5)
        writer.write()
        assert s._vis_data == [] and s._histograms == []
        writer.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "histograms": 0}).Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(2, 2.0)]
    assert acc.Tags()["images"] == ["img"]
    assert acc.Tags()["histograms"] == ["w"]

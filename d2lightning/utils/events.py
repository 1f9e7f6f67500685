"""detectron2's ``utils.events``: the ``EventStorage`` every training scalar goes through, and its writers.

Same names, signatures and file formats as detectron2: ``EventStorage`` (a context that is pushed on a global
stack so that models can call :func:`get_event_storage` inside their forward), ``JSONWriter`` (one JSON line per
iteration in ``metrics.json``), ``CommonMetricPrinter`` (the console line with ETA) and ``TensorboardXWriter``
(here on ``torch.utils.tensorboard``). Under d2lightning the storage is opened by the training run
(:mod:`d2lightning.engine.lightning.run`) and, besides these writers, feeds the Lightning Trainer's loggers and
``callback_metrics``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from d2lightning import _compat
from d2lightning.utils.history_buffer import HistoryBuffer

__all__ = [
    "CommonMetricPrinter",
    "EventStorage",
    "EventWriter",
    "JSONWriter",
    "TensorboardXWriter",
    "get_event_storage",
    "has_event_storage",
]

_CURRENT_STORAGE_STACK: list[EventStorage] = []


def get_event_storage() -> EventStorage:
    """The innermost open :class:`EventStorage`.

    Raises:
        RuntimeError: when no storage is open (no ``with EventStorage(...)`` and no running trainer).
    """
    if not _CURRENT_STORAGE_STACK:
        raise RuntimeError("get_event_storage() has to be called inside a 'with EventStorage(...)' context!")
    return _CURRENT_STORAGE_STACK[-1]


def has_event_storage() -> bool:
    """Whether an :class:`EventStorage` is open."""
    return bool(_CURRENT_STORAGE_STACK)


class EventStorage:
    """Scalars, images and histograms of a training run, stamped with the iteration they belong to.

    detectron2 ``EventStorage``. Use it as a context manager; while open, :func:`get_event_storage` returns it,
    and so does detectron2's own ``get_event_storage`` when detectron2 is loaded (see :mod:`d2lightning._compat`).

    Args:
        start_iter: the iteration the storage starts at.

    Example::

        with EventStorage(0) as storage:
            storage.put_scalar("loss", 0.5)
            storage.step()
            storage.latest()   # {"loss": (0.5, 0)}
    """

    def __init__(self, start_iter: int = 0) -> None:
        self._history: defaultdict[str, HistoryBuffer] = defaultdict(HistoryBuffer)
        self._smoothing_hints: dict[str, bool] = {}
        self._latest_scalars: dict[str, tuple[float, int]] = {}
        self._iter = int(start_iter)
        self._current_prefix = ""
        self._vis_data: list[tuple[str, Any, int]] = []
        self._histograms: list[dict[str, Any]] = []
        #: d2lightning: called as ``scalar_listener(name, value, iteration)`` after every scalar put (a training
        #: run uses it to keep Lightning's ``callback_metrics`` current); None by default.
        self.scalar_listener: Callable[[str, float, int], None] | None = None

    # ---------------------------------------------------------------- writing
    def put_image(self, img_name: str, img_tensor: torch.Tensor | Any) -> None:
        """Store an image (CHW, RGB; uint8 in [0, 255] or float in [0, 1]) for the TensorBoard writer."""
        self._vis_data.append((img_name, img_tensor, self._iter))

    def put_scalar(
        self, name: str, value: float | torch.Tensor, smoothing_hint: bool = True, cur_iter: int | None = None
    ) -> None:
        """Add a scalar at ``cur_iter`` (default: the storage's iteration).

        Args:
            name: the key; the current :meth:`name_scope` prefix is prepended.
            value: anything ``float()`` accepts.
            smoothing_hint: whether writers should report a windowed median rather than the raw value. A
                name keeps the hint it was first put with.
            cur_iter: the iteration to stamp; defaults to :attr:`iter`.

        Raises:
            AssertionError: when ``name`` was put before with a different ``smoothing_hint`` (as detectron2).
        """
        name = self._current_prefix + name
        it = self._iter if cur_iter is None else int(cur_iter)
        value = float(value)
        self._history[name].update(value, it)
        self._latest_scalars[name] = (value, it)
        existing = self._smoothing_hints.get(name)
        if existing is None:
            self._smoothing_hints[name] = smoothing_hint
        elif existing != smoothing_hint:
            raise AssertionError(f"Scalar {name} was put with a different smoothing_hint!")
        if self.scalar_listener is not None:
            self.scalar_listener(name, value, it)

    def put_scalars(self, *, smoothing_hint: bool = True, cur_iter: int | None = None, **kwargs: float) -> None:
        """Put several scalars at once: ``storage.put_scalars(loss=1.0, accuracy=0.5)``."""
        for name, value in kwargs.items():
            self.put_scalar(name, value, smoothing_hint=smoothing_hint, cur_iter=cur_iter)

    def put_histogram(self, hist_name: str, hist_tensor: torch.Tensor, bins: int = 1000) -> None:
        """Store a histogram of ``hist_tensor`` for TensorBoard (``add_histogram_raw`` arguments)."""
        values = hist_tensor.detach().float().flatten().cpu()
        ht_min, ht_max = float(values.min()), float(values.max())
        counts = torch.histc(values, bins=bins, min=ht_min, max=ht_max)
        edges = torch.linspace(ht_min, ht_max, steps=bins + 1)
        self._histograms.append(
            {
                "tag": hist_name,
                "min": ht_min,
                "max": ht_max,
                "num": len(values),
                "sum": float(values.sum()),
                "sum_squares": float((values**2).sum()),
                "bucket_limits": edges[1:].tolist(),
                "bucket_counts": counts.tolist(),
                "global_step": self._iter,
            }
        )

    # ---------------------------------------------------------------- reading
    def history(self, name: str) -> HistoryBuffer:
        """The :class:`HistoryBuffer` of ``name``.

        Raises:
            KeyError: when nothing was put under ``name``.
        """
        buf = self._history.get(name)
        if buf is None:
            raise KeyError(f"No history metric available for {name}!")
        return buf

    def histories(self) -> dict[str, HistoryBuffer]:
        """Every scalar's history."""
        return self._history

    def latest(self) -> dict[str, tuple[float, int]]:
        """``{name: (latest value, iteration it was put at)}``."""
        return self._latest_scalars

    def latest_with_smoothing_hint(self, window_size: int = 20) -> dict[str, tuple[float, int]]:
        """Like :meth:`latest`, but hinted scalars give the median over the last ``window_size`` iterations."""
        result = {}
        for name, (value, it) in self._latest_scalars.items():
            if self._smoothing_hints[name]:
                value = self._history[name].median(self.count_samples(name, window_size))
            result[name] = (value, it)
        return result

    def count_samples(self, name: str, window_size: int = 20) -> int:
        """How many of ``name``'s values lie in the last ``window_size`` *iterations* (not entries)."""
        buf = self._history.get(name)
        data = buf.values() if buf is not None else ()
        if not data:
            return 0
        threshold = data[-1][1] - window_size
        count = 0
        for _, it in reversed(data):
            if it <= threshold:
                break
            count += 1
        return count

    def smoothing_hints(self) -> dict[str, bool]:
        """``{name: smoothing_hint}`` for every scalar."""
        return self._smoothing_hints

    # ---------------------------------------------------------------- iteration
    def step(self) -> None:
        """Advance the iteration by one."""
        self._iter += 1

    @property
    def iter(self) -> int:
        """The current iteration; assigned by the trainer before every step."""
        return self._iter

    @iter.setter
    def iter(self, val: int) -> None:
        self._iter = int(val)

    @property
    def iteration(self) -> int:
        """Alias of :attr:`iter` (backward compatibility, as detectron2)."""
        return self._iter

    # ---------------------------------------------------------------- context
    def __enter__(self) -> EventStorage:
        _CURRENT_STORAGE_STACK.append(self)
        _compat.share_storage(self)  # detectron2's get_event_storage() returns it too, if detectron2 is loaded
        return self

    def __exit__(self, *exc: object) -> None:
        if not _CURRENT_STORAGE_STACK or _CURRENT_STORAGE_STACK[-1] is not self:
            raise RuntimeError("EventStorage exited out of order: it is not the innermost open storage")
        _CURRENT_STORAGE_STACK.pop()
        _compat.unshare_storage(self)

    @contextmanager
    def name_scope(self, name: str) -> Iterator[None]:
        """Prefix every scalar put inside the block with ``name/`` (scopes replace, not nest)."""
        old_prefix = self._current_prefix
        self._current_prefix = name.rstrip("/") + "/"
        try:
            yield
        finally:
            self._current_prefix = old_prefix

    def clear_images(self) -> None:
        """Drop stored images (the TensorBoard writer calls it after writing them)."""
        self._vis_data = []

    def clear_histograms(self) -> None:
        """Drop stored histograms (the TensorBoard writer calls it after writing them)."""
        self._histograms = []


class EventWriter:
    """Base class of the writers that read the current storage: ``write()`` periodically, ``close()`` at the end."""

    def write(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class JSONWriter(EventWriter):
    """Append one JSON object per iteration to ``json_file`` (detectron2's ``metrics.json`` format).

    Each :meth:`write` takes the scalars put since the previous write (smoothed over ``window_size``), groups
    them by the iteration they were stamped with, and writes one line per group — keys sorted, plus
    ``"iteration"`` — in the order the iterations were first seen. The file is opened in append mode, flushed
    and fsynced after each write.

    Args:
        json_file: path of the file (created if missing, appended to otherwise).
        window_size: the smoothing window of hinted scalars, in iterations.

    Raises:
        OSError: naming the file when it cannot be opened for appending.
    """

    def __init__(self, json_file: str | os.PathLike[str], window_size: int = 20) -> None:
        self._path = os.fspath(json_file)
        try:
            self._file_handle = open(self._path, "a")  # noqa: SIM115 - closed in close()
        except OSError as e:
            raise OSError(f"JSONWriter cannot open {self._path!r} for appending: {e}") from e
        self._window_size = window_size
        self._last_write = -1

    def write(self) -> None:
        storage = get_event_storage()
        to_save: defaultdict[int, dict[str, float]] = defaultdict(dict)
        for name, (value, it) in storage.latest_with_smoothing_hint(self._window_size).items():
            if it > self._last_write:
                to_save[it][name] = value
        if to_save:
            self._last_write = max(to_save)
        for it, scalars in to_save.items():
            scalars["iteration"] = it
            self._file_handle.write(json.dumps(scalars, sort_keys=True) + "\n")
        self._file_handle.flush()
        os.fsync(self._file_handle.fileno())

    def close(self) -> None:
        self._file_handle.close()


class TensorboardXWriter(EventWriter):
    """Write new scalars (smoothed), then every stored image and histogram, to TensorBoard event files.

    The ``SummaryWriter`` (``torch.utils.tensorboard``) is created at the first write. Images and histograms are
    cleared from the storage after writing, so this must be their only consumer (as in detectron2).

    Args:
        log_dir: directory of the event files.
        window_size: the smoothing window of hinted scalars, in iterations.
        **kwargs: passed to ``SummaryWriter``.
    """

    def __init__(self, log_dir: str, window_size: int = 20, **kwargs: Any) -> None:
        self._log_dir = log_dir
        self._window_size = window_size
        self._writer_kwargs = kwargs
        self._writer: Any = None
        self._last_write = -1

    @property
    def _summary_writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(self._log_dir, **self._writer_kwargs)
        return self._writer

    def write(self) -> None:
        storage = get_event_storage()
        new_last_write = self._last_write
        for name, (value, it) in storage.latest_with_smoothing_hint(self._window_size).items():
            if it > self._last_write:
                self._summary_writer.add_scalar(name, value, it)
                new_last_write = max(new_last_write, it)
        self._last_write = new_last_write
        if storage._vis_data:
            for img_name, img, step in storage._vis_data:
                self._summary_writer.add_image(img_name, img, step)
            storage.clear_images()
        if storage._histograms:
            for params in storage._histograms:
                self._summary_writer.add_histogram_raw(**params)
            storage.clear_histograms()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class CommonMetricPrinter(EventWriter):
    """Log detectron2's progress line: ETA, iteration, losses, ``[metric]`` scalars, times, lr and memory.

    ``eta: 0:01:23  iter: 19  total_loss: 0.5  ...  time: 0.1000  last_time: 0.1000  data_time: 0.0010
    last_data_time: 0.0010  lr: 0.02  max_mem: 123M``. Parts whose scalars are missing are omitted. The ETA
    is the median of the last 1000 ``time`` values times the iterations left, and is also stored as
    ``eta_seconds``; without ``time`` it is estimated from the wall clock between writes. Nothing is logged
    when ``storage.iter == max_iter`` (the final write after training).

    Args:
        max_iter: the run's last iteration + 1; without it no ETA is shown.
        window_size: the smoothing window of losses and ``data_time``, in iterations.
    """

    def __init__(self, max_iter: int | None = None, window_size: int = 20) -> None:
        self.logger = logging.getLogger("d2lightning.utils.events")
        self._max_iter = max_iter
        self._window_size = window_size
        self._last_write: tuple[int, float] | None = None

    def _get_eta(self, storage: EventStorage) -> str | None:
        if self._max_iter is None:
            return ""
        iteration = storage.iter
        left = self._max_iter - iteration - 1
        try:
            eta_seconds = storage.history("time").median(1000) * left
        except KeyError:
            eta = None
            if self._last_write is not None and iteration != self._last_write[0]:
                per_iter = (time.perf_counter() - self._last_write[1]) / (iteration - self._last_write[0])
                eta = str(datetime.timedelta(seconds=int(per_iter * left)))
            self._last_write = (iteration, time.perf_counter())
            return eta
        storage.put_scalar("eta_seconds", eta_seconds, smoothing_hint=False)
        return str(datetime.timedelta(seconds=int(eta_seconds)))

    def write(self) -> None:
        storage = get_event_storage()
        iteration = storage.iter
        if iteration == self._max_iter:
            return
        histories = storage.histories()
        data_time = histories.get("data_time")
        iter_time = histories.get("time")
        lr = histories.get("lr")
        eta = self._get_eta(storage)
        max_mem_mb = torch.cuda.max_memory_allocated() / 1024.0**2 if torch.cuda.is_available() else None

        def smoothed(keyword: str) -> str:
            return "  ".join(
                f"{k}: {v.median(storage.count_samples(k, self._window_size)):.4g}"
                for k, v in histories.items()
                if keyword in k
            )

        parts = [f"eta: {eta}  " if eta else "", f"iter: {iteration}  ", smoothed("loss"), "  "]
        parts.append(smoothed("[metric]") + "  ")
        if iter_time is not None:
            parts.append(f"time: {iter_time.global_avg():.4f}  last_time: {iter_time.latest():.4f}  ")
        if data_time is not None:
            avg = data_time.avg(storage.count_samples("data_time", self._window_size))
            parts.append(f"data_time: {avg:.4f}  last_data_time: {data_time.latest():.4f}  ")
        parts.append(f"lr: {lr.latest():.5g}  " if lr is not None else "lr: N/A  ")
        if max_mem_mb is not None:
            parts.append(f"max_mem: {max_mem_mb:.0f}M")
        self.logger.info(" " + "".join(parts).rstrip())

"""detectron2 ``TorchProfiler`` and ``AutogradProfiler``: profile chosen iterations with ``torch.profiler``.

before_step → ``on_train_batch_start`` (profiler entered); after_step → ``on_train_batch_end`` (profiler
exited, trace written); after_train → ``on_train_end`` / ``on_exception`` (a profiler still open is closed).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from d2lightning.engine.hook_base import HookBase
from d2lightning.utils import comm

__all__ = ["AutogradProfiler", "TorchProfiler"]


class TorchProfiler(HookBase):
    """Profile every iteration for which ``enable_predicate(trainer)`` is true with ``torch.profiler.profile``.

    The predicate is called in each ``before_step``; when true, the span up to this hook's ``after_step``
    (the step and the hooks in between) is profiled with ``record_shapes``, ``profile_memory``,
    ``with_stack`` and ``with_flops``. With ``save_tensorboard`` the trace goes to
    ``output_dir/log/profiler-tensorboard-iter{iter}/`` through ``torch.profiler.tensorboard_trace_handler``
    as worker ``"worker{rank}"`` (view it with ``tensorboard --logdir output_dir/log``); otherwise a Chrome
    trace is written to ``output_dir/profiler-trace-iter{iter}.json`` (open it in ``chrome://tracing`` or
    Perfetto). Every rank where the predicate holds writes; ranks other than 0 add ``-rank{rank}`` to the
    Chrome trace name so they do not overwrite each other (detectron2 writes them all to one name).

    Args:
        enable_predicate: ``fn(trainer) -> bool``, called once per iteration.
        output_dir: a local directory (created when needed).
        activities: as ``torch.profiler.profile(activities=...)``; None profiles CPU, and CUDA when available.
        save_tensorboard: write TensorBoard traces instead of a Chrome trace.

    Raises:
        TypeError: when ``enable_predicate`` is not callable or ``output_dir`` is not a path.
        ValueError: when ``output_dir`` cannot be created or written (naming it and the reason).

    Example::

        hooks.TorchProfiler(lambda trainer: 10 < trainer.iter < 20, cfg.OUTPUT_DIR)
    """

    def __init__(
        self,
        enable_predicate: Callable[[Any], bool],
        output_dir: str | os.PathLike[str],
        *,
        activities: Iterable[torch.profiler.ProfilerActivity] | None = None,
        save_tensorboard: bool = True,
    ) -> None:
        self._enable_predicate = _check_predicate(type(self).__name__, enable_predicate)
        self._output_dir = _check_output_dir(type(self).__name__, output_dir)
        self._activities = list(activities) if activities is not None else None
        self._save_tensorboard = save_tensorboard
        self._profiler: torch.profiler.profile | None = None

    def before_step(self) -> None:
        if self._enable_predicate(self.trainer):
            self._profiler = self._make_profiler()
            self._profiler.__enter__()
        else:
            self._profiler = None

    def after_step(self) -> None:
        profiler = self._profiler
        if profiler is None:
            return
        self._profiler = None
        profiler.__exit__(None, None, None)  # with save_tensorboard the trace handler writes here
        if not self._save_tensorboard:
            _makedirs(self._output_dir)
            rank = comm.get_rank()
            suffix = f"-rank{rank}" if rank > 0 else ""
            profiler.export_chrome_trace(str(self._output_dir / f"profiler-trace-iter{self.trainer.iter}{suffix}.json"))

    def after_train(self) -> None:
        # A step that failed leaves its profiler open: stop it without writing a partial trace.
        if self._profiler is not None:
            profiler, self._profiler = self._profiler, None
            profiler.on_trace_ready = None
            profiler.__exit__(None, None, None)

    def _make_profiler(self) -> torch.profiler.profile:
        on_trace_ready = None
        if self._save_tensorboard:
            log_dir = self._output_dir / "log" / f"profiler-tensorboard-iter{self.trainer.iter}"
            _makedirs(log_dir)
            on_trace_ready = torch.profiler.tensorboard_trace_handler(str(log_dir), f"worker{comm.get_rank()}")
        return torch.profiler.profile(
            activities=self._activities,
            on_trace_ready=on_trace_ready,
            record_shapes=True,
            profile_memory=True,
            with_stack=True,
            with_flops=True,
        )


class AutogradProfiler(TorchProfiler):
    """Deprecated (as in detectron2): use :class:`TorchProfiler`. Profile chosen iterations to Chrome traces.

    The behaviour detectron2 intended (its version fails in ``after_step``): for every iteration where
    ``enable_predicate(trainer)`` holds, the step is profiled (CPU, plus CUDA when ``use_cuda`` and CUDA is
    available — the options of the old ``torch.autograd.profiler.profile``, now on ``torch.profiler``) and a
    Chrome trace is written to ``output_dir/profiler-trace-iter{iter}.json``. Constructing it emits a
    ``DeprecationWarning``.

    Args:
        enable_predicate: ``fn(trainer) -> bool``, called once per iteration.
        output_dir: a local directory (created when needed).
        use_cuda: also profile CUDA activity, when CUDA is available.

    Raises:
        TypeError: when ``enable_predicate`` is not callable or ``output_dir`` is not a path.
        ValueError: when ``output_dir`` cannot be created or written.
    """

    def __init__(
        self, enable_predicate: Callable[[Any], bool], output_dir: str | os.PathLike[str], *, use_cuda: bool = True
    ) -> None:
        warnings.warn(
            "AutogradProfiler is deprecated in favor of TorchProfiler (same arguments, plus activities= and "
            "save_tensorboard=)",
            DeprecationWarning,
            stacklevel=2,
        )
        activities = [torch.profiler.ProfilerActivity.CPU]
        if use_cuda and torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        super().__init__(enable_predicate, output_dir, activities=activities, save_tensorboard=False)
        self._use_cuda = use_cuda

    def _make_profiler(self) -> torch.profiler.profile:
        return torch.profiler.profile(activities=self._activities)


def _check_predicate(owner: str, fn: Any) -> Callable[[Any], bool]:
    if not callable(fn):
        raise TypeError(f"{owner} enable_predicate must be callable (trainer -> bool), got {fn!r}")
    return fn


def _check_output_dir(owner: str, output_dir: Any) -> Path:
    """The directory as a Path, if it exists and is writable or could be created; else a ValueError saying why."""
    if not isinstance(output_dir, (str, os.PathLike)) or not str(output_dir):
        raise TypeError(f"{owner} output_dir must be a non-empty path (str or os.PathLike), got {output_dir!r}")
    path = Path(output_dir)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(
            f"{owner} output_dir {str(output_dir)!r} cannot be created: {str(existing)!r} is not a directory"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"{owner} output_dir {str(output_dir)!r} is not writable: no write permission on {str(existing)!r}"
        )
    return path


def _makedirs(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create the profiler output directory {str(path)!r}: {e}") from e

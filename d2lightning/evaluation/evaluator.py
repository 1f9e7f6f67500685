"""detectron2 ``evaluation/evaluator.py``: the evaluator protocol and the inference loop.

:class:`DatasetEvaluator` accumulates ``(inputs, outputs)`` pairs and summarises them;
:func:`inference_on_dataset` runs a model over a finite loader, feeds an evaluator and times the run
exactly as detectron2 does (warm-up batches excluded, the same log lines). It contains no barrier: evaluators
that gather across ranks (such as :class:`~d2lightning.evaluation.COCOEvaluator`) do their own
collectives, and the ``EvalHook`` synchronises afterwards.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from d2lightning.utils.comm import get_world_size, is_main_process
from d2lightning.utils.sharding import gathered_weights

__all__ = ["DatasetEvaluator", "DatasetEvaluators", "inference_context", "inference_on_dataset"]

logger = logging.getLogger(__name__)

CALLBACK_NAMES = ("on_start", "before_inference", "after_inference", "on_end")
_PROGRESS_LOG_PERIOD = 5.0  # seconds between two "Inference done" lines, as detectron2's log_every_n_seconds


class DatasetEvaluator:
    """Base class of a dataset evaluator (detectron2 ``DatasetEvaluator``).

    :func:`inference_on_dataset` calls :meth:`reset` once, :meth:`process` after every batch and
    :meth:`evaluate` at the end. Every method of the base class does nothing; :meth:`evaluate` returns None.

    Example::

        class Counter(DatasetEvaluator):
            def reset(self):
                self.n = 0

            def process(self, inputs, outputs):
                self.n += len(inputs)

            def evaluate(self):
                return {"count": {"images": self.n}}
    """

    def reset(self) -> None:
        """Prepare for a new round of evaluation (called before the first :meth:`process`)."""

    def process(self, inputs: Any, outputs: Any) -> None:
        """Consume one batch: ``inputs`` as given to the model, ``outputs`` as it returned them.

        Both are usually lists of the same length, one entry per image, to be walked with ``zip``.
        """

    def evaluate(self) -> dict[str, Any] | None:
        """Summarise everything processed since :meth:`reset`.

        Returns:
            By convention ``{task: {metric: score}}`` (e.g. ``{"bbox": {"AP50": 80.0}}``). Off the main
            process an evaluator may return None or ``{}``.
        """
        return None


def _check_evaluator(evaluator: Any, name: str) -> None:
    missing = [m for m in ("reset", "process", "evaluate") if not callable(getattr(evaluator, m, None))]
    if missing:
        raise TypeError(
            f"{name} must be a DatasetEvaluator (with reset/process/evaluate methods); "
            f"got {type(evaluator).__name__} without {', '.join(missing)}"
        )


class DatasetEvaluators(DatasetEvaluator):
    """Several evaluators used as one (detectron2 ``DatasetEvaluators``).

    Every call is forwarded to each evaluator in order. :meth:`evaluate` merges the result dicts on the main
    process and returns ``{}`` elsewhere.

    Args:
        evaluators: the evaluators to combine.

    Raises:
        TypeError: if an element lacks ``reset``/``process``/``evaluate``.
    """

    def __init__(self, evaluators: Iterable[Any]) -> None:
        self._evaluators = list(evaluators)
        for i, evaluator in enumerate(self._evaluators):
            _check_evaluator(evaluator, f"evaluators[{i}]")

    def reset(self) -> None:
        """Reset every evaluator."""
        for evaluator in self._evaluators:
            evaluator.reset()

    def process(self, inputs: Any, outputs: Any) -> None:
        """Pass the batch to every evaluator."""
        for evaluator in self._evaluators:
            evaluator.process(inputs, outputs)

    def evaluate(self) -> dict[str, Any]:
        """Evaluate each evaluator (on every rank) and merge their results on the main process.

        Raises:
            ValueError: when two evaluators produce the same top-level key.
        """
        results: dict[str, Any] = {}
        for evaluator in self._evaluators:
            result = evaluator.evaluate()
            if not is_main_process() or result is None:
                continue
            for key, value in result.items():
                if key in results:
                    raise ValueError(
                        f"Different evaluators produce results with the same key {key!r} "
                        f"(the second one is {type(evaluator).__name__})"
                    )
                results[key] = value
        return results


@contextmanager
def inference_context(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block, then back in its previous mode (detectron2
    ``inference_context``).

    As in detectron2 the previous mode is the top-level ``model.training`` flag, restored with
    ``model.train(flag)`` so that models overriding ``train``/``eval`` keep control. Unlike detectron2 the
    mode is restored even when the block raises.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    training_mode = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training_mode)


def _check_callbacks(callbacks: Mapping[str, Callable[[], Any]] | None) -> Mapping[str, Callable[[], Any]]:
    if callbacks is None:
        return {}
    if not isinstance(callbacks, Mapping):
        raise TypeError(f"callbacks must be a dict of callables or None, got {type(callbacks).__name__}")
    for key, fn in callbacks.items():
        if key not in CALLBACK_NAMES:
            raise ValueError(f"callbacks has unknown key {key!r}; accepted keys are {', '.join(CALLBACK_NAMES)}")
        if not callable(fn):
            raise TypeError(f"callbacks[{key!r}] must be callable, got {type(fn).__name__}")
    return callbacks


def _as_evaluator(evaluator: Any) -> DatasetEvaluator:
    if evaluator is None:
        return DatasetEvaluators([])
    if isinstance(evaluator, Sequence) and not isinstance(evaluator, str):
        return DatasetEvaluators(evaluator)
    _check_evaluator(evaluator, "evaluator")
    return evaluator


def _cuda_in_use() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def inference_on_dataset(
    model: Callable[[Any], Any],
    data_loader: Iterable[Any],
    evaluator: DatasetEvaluator | Sequence[DatasetEvaluator] | None,
    callbacks: Mapping[str, Callable[[], Any]] | None = None,
) -> dict[str, Any]:
    """Run ``model`` over ``data_loader`` and evaluate (detectron2 ``inference_on_dataset``).

    Behaviour, as in detectron2:

    * ``len(data_loader)`` is required; None as ``evaluator`` only benchmarks; a list becomes
      :class:`DatasetEvaluators`. ``evaluator.reset()`` is called first.
    * An ``nn.Module`` runs under :func:`inference_context` (eval mode, restored afterwards); everything runs
      under ``torch.no_grad()``.
    * ``callbacks`` (all optional, called without arguments): ``on_start`` before the first batch,
      ``before_inference``/``after_inference`` around every ``model(inputs)``, ``on_end`` after the last
      batch.
    * After each forward, ``torch.cuda.synchronize()`` when CUDA is in use, so timings are exact.
    * The first ``min(5, len - 1)`` batches are warm-up and are excluded from the timings; the log ends with
      ``"Total inference time: 0:00:01.234567 (0.012346 s / iter per device, on 2 devices)"`` and
      ``"Total inference pure compute time: ..."`` (logger ``d2lightning.evaluation.evaluator``).
    * No barrier: every rank must call this (evaluators may gather); each rank returns what its evaluator
      returns.
    * d2lightning: a model sharded with FSDP2 gets its full weights on every rank first (a collective), so that
      each rank runs its own batches on its own.

    Args:
        model: a callable taking one element of ``data_loader``.
        data_loader: a finite iterable with ``len()``.
        evaluator: a :class:`DatasetEvaluator`, a list of them, or None.
        callbacks: optional dict with keys among ``on_start``, ``before_inference``, ``after_inference``,
            ``on_end``.

    Returns:
        ``evaluator.evaluate()``, or ``{}`` when it returns None.

    Raises:
        TypeError: if ``data_loader`` has no length, or an argument has the wrong type.
        ValueError: if ``callbacks`` has an unknown key.
    """
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    try:
        total = len(data_loader)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"inference_on_dataset needs a data_loader with a fixed length (len(data_loader)); "
            f"got {type(data_loader).__name__}, which has none. Use a finite loader such as detectron2's "
            "build_detection_test_loader (InferenceSampler)."
        ) from None
    fns = _check_callbacks(callbacks)
    evaluator = _as_evaluator(evaluator)
    num_devices = get_world_size()
    logger.info("Start inference on %d batches", total)
    evaluator.reset()

    def call(name: str) -> None:
        fn = fns.get(name)
        if fn is not None:
            fn()

    num_warmup = min(5, total - 1)
    start_time = time.perf_counter()
    data_time = compute_time = eval_time = 0.0
    last_log: float | None = None
    with ExitStack() as stack:
        if isinstance(model, nn.Module):
            stack.enter_context(inference_context(model))
            stack.enter_context(gathered_weights(model))  # a sharded (FSDP) model: full weights on every rank
        stack.enter_context(torch.no_grad())

        start_data = time.perf_counter()
        call("on_start")
        for idx, inputs in enumerate(data_loader):
            data_time += time.perf_counter() - start_data
            if idx == num_warmup:
                start_time = time.perf_counter()
                data_time = compute_time = eval_time = 0.0

            start_compute = time.perf_counter()
            call("before_inference")
            outputs = model(inputs)
            call("after_inference")
            if _cuda_in_use():
                torch.cuda.synchronize()
            compute_time += time.perf_counter() - start_compute

            start_eval = time.perf_counter()
            evaluator.process(inputs, outputs)
            eval_time += time.perf_counter() - start_eval

            n = idx + 1 - num_warmup * int(idx >= num_warmup)
            now = time.perf_counter()
            due = last_log is None or now - last_log >= _PROGRESS_LOG_PERIOD
            if due and (idx >= num_warmup * 2 or compute_time / n > 5):
                last_log = now
                per_iter = (now - start_time) / n
                eta = datetime.timedelta(seconds=int(per_iter * (total - idx - 1)))
                logger.info(
                    f"Inference done {idx + 1}/{total}. Dataloading: {data_time / n:.4f} s/iter. "
                    f"Inference: {compute_time / n:.4f} s/iter. Eval: {eval_time / n:.4f} s/iter. "
                    f"Total: {per_iter:.4f} s/iter. ETA={eta}"
                )
            start_data = time.perf_counter()
        call("on_end")

    # this worker's time only, as in detectron2 (there is no barrier before it)
    total_time = time.perf_counter() - start_time
    timed = total - num_warmup
    logger.info(
        f"Total inference time: {datetime.timedelta(seconds=total_time)} "
        f"({total_time / timed:.6f} s / iter per device, on {num_devices} devices)"
    )
    logger.info(
        f"Total inference pure compute time: {datetime.timedelta(seconds=int(compute_time))} "
        f"({compute_time / timed:.6f} s / iter per device, on {num_devices} devices)"
    )

    results = evaluator.evaluate()
    return {} if results is None else results

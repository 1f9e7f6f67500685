"""detectron2 ``evaluation/testing.py``: print, check and flatten evaluation results.

Results have detectron2's layout ``{task: {metric: score}}`` (e.g. ``{"bbox": {"AP": 40.1, "AP50": 61.0}}``).
"""

from __future__ import annotations

import logging
import math
import pprint
from collections.abc import Mapping
from typing import Any

from d2lightning.config.lookup import cfg_get

__all__ = ["flatten_results_dict", "print_csv_format", "verify_results"]

logger = logging.getLogger(__name__)


def print_csv_format(results: Mapping[str, Any]) -> None:
    """Log the main metrics as comma-separated lines (detectron2 ``print_csv_format``).

    For every task with a dict of metrics, three INFO lines go to the ``d2lightning.evaluation.testing``
    logger::

        copypaste: Task: bbox
        copypaste: AP,AP50,AP75,APs,APm,APl
        copypaste: 82.6733,100.0000,75.2475,nan,65.3465,100.0000

    Metric names containing ``-`` (the per-category ``AP-<class>`` entries) are left out. A task whose value
    is not a dict is logged as ``copypaste: <task>=<value>``.

    Raises:
        TypeError: if ``results`` is not a mapping.
    """
    if not isinstance(results, Mapping):
        raise TypeError(f"results must be a mapping of task -> metrics, got {type(results).__name__}")
    for task, res in results.items():
        if isinstance(res, Mapping):
            important = [(k, v) for k, v in res.items() if "-" not in k]
            logger.info(f"copypaste: Task: {task}")
            logger.info("copypaste: " + ",".join(k for k, _ in important))
            logger.info("copypaste: " + ",".join(f"{v:.4f}" for _, v in important))
        else:
            logger.info(f"copypaste: {task}={res}")


def _expected_results(cfg: Any) -> list[Any]:
    try:
        expected = cfg_get(cfg, "TEST.EXPECTED_RESULTS")
    except KeyError:
        raise ValueError("cfg has no TEST.EXPECTED_RESULTS entry") from None
    if expected is None:
        return []
    if isinstance(expected, (str, bytes, Mapping)):
        raise TypeError(f"cfg.TEST.EXPECTED_RESULTS must be a list, got {type(expected).__name__}")
    return list(expected)


def _check_one(results: Mapping[str, Any], entry: Any) -> str | None:
    """Return why ``entry`` fails, or None when it holds."""
    task, metric, expected, tolerance = entry
    task_results = results.get(task)
    if not isinstance(task_results, Mapping):
        return f"task {task!r} is missing from the results"
    actual = task_results.get(metric)
    if actual is None:
        return f"metric {task}/{metric} is missing from the results"
    actual = float(actual)
    if not math.isfinite(actual):
        return f"{task}/{metric} = {actual} is not finite"
    if abs(actual - float(expected)) > float(tolerance):
        return f"{task}/{metric} = {actual}, expected {expected} +- {tolerance}"
    return None


def verify_results(cfg: Any, results: Mapping[str, Any]) -> bool:
    """Check ``results`` against ``cfg.TEST.EXPECTED_RESULTS`` (detectron2 ``verify_results``).

    Each expected entry is ``[task, metric, expected, tolerance]``; it holds when
    ``results[task][metric]`` exists, is finite and is within ``tolerance`` of ``expected``. An empty list
    always passes. On success logs "Results verification passed."; on failure logs "Result verification
    failed!" with each reason, the expected and the actual results (ERROR level).

    Unlike detectron2 this never calls ``sys.exit(1)``: it returns False and leaves the exit to the caller
    (the training script); a missing task counts as a failure instead of raising ``KeyError``.

    Args:
        cfg: a config with ``TEST.EXPECTED_RESULTS`` (attribute or key access: yacs, omegaconf or dicts).
        results: ``{task: {metric: score}}``.

    Returns:
        Whether every expectation holds.

    Raises:
        ValueError: if the config has no ``TEST.EXPECTED_RESULTS`` or an entry does not have 4 elements.
        TypeError: if ``results`` or ``TEST.EXPECTED_RESULTS`` have the wrong type.
    """
    if not isinstance(results, Mapping):
        raise TypeError(f"results must be a mapping of task -> metrics, got {type(results).__name__}")
    expected_results = _expected_results(cfg)
    if not expected_results:
        return True
    failures: list[str] = []
    for i, entry in enumerate(expected_results):
        if isinstance(entry, (str, bytes)) or len(entry) != 4:
            raise ValueError(
                f"cfg.TEST.EXPECTED_RESULTS[{i}] must be [task, metric, expected, tolerance], got {entry!r}"
            )
        reason = _check_one(results, entry)
        if reason is not None:
            failures.append(reason)

    if failures:
        logger.error("Result verification failed!")
        for reason in failures:
            logger.error(f"  {reason}")
        logger.error("Expected Results: " + str([list(e) for e in expected_results]))
        logger.error("Actual Results: " + pprint.pformat(dict(results)))
        return False
    logger.info("Results verification passed.")
    return True


def flatten_results_dict(results: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten nested dicts with "/"-joined keys (detectron2 ``flatten_results_dict``).

    ``{"bbox": {"AP": 1.0}, "loss": 2.0}`` becomes ``{"bbox/AP": 1.0, "loss": 2.0}``; deeper levels likewise
    (``{"ds": {"bbox": {"AP": 1.0}}}`` -> ``{"ds/bbox/AP": 1.0}``). Values that are not mappings are kept as
    they are.

    Raises:
        TypeError: if ``results`` is not a mapping.
    """
    if not isinstance(results, Mapping):
        raise TypeError(f"results must be a mapping, got {type(results).__name__}")
    flat: dict[str, Any] = {}
    for key, value in results.items():
        if isinstance(value, Mapping):
            for sub_key, sub_value in flatten_results_dict(value).items():
                flat[f"{key}/{sub_key}"] = sub_value
        else:
            flat[key] = value
    return flat

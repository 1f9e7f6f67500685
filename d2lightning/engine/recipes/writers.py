"""detectron2's ``default_writers``: the console printer, ``metrics.json`` and TensorBoard of a training run."""

from __future__ import annotations

import os

from d2lightning.utils.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardXWriter

__all__ = ["default_writers"]


def default_writers(output_dir: str, max_iter: int | None = None) -> list[EventWriter]:
    """detectron2's writers: the console printer, ``output_dir/metrics.json`` and TensorBoard in ``output_dir``.

    Args:
        output_dir: the directory (created if missing).
        max_iter: the run's ``max_iter``, for the printer's ETA.
    """
    os.makedirs(output_dir, exist_ok=True)
    return [
        CommonMetricPrinter(max_iter),
        JSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardXWriter(output_dir),
    ]

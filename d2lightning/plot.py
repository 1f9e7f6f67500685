"""``d2lightning plot OUTPUT_DIR``: training curves from a ``metrics.json`` as one PNG.

Reads detectron2's ``metrics.json`` format (one JSON object per line, ``{"iteration": N, "total_loss": ...}``,
written by ``JSONWriter``), so it works on detectron2's own output folders too. Draws three panels over the
iterations: the losses (``total_loss`` and every ``loss_*``), the learning rate (``lr``) and the evaluation
results (every ``*/AP`` and ``*/AP50``). A file that resumed runs appended to is read as the history of the
last run: where the iterations go back (a restart from a checkpoint), the values the earlier run wrote from
that iteration on are dropped, and where an iteration is written twice the last value wins.

matplotlib is an optional dependency (``pip install 'd2lightning[plot]'``): training never needs it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["add_plot_parser", "load_metrics", "plot_metrics"]

METRICS_FILE = "metrics.json"
_AP_NAMES = ("AP", "AP50")


def load_metrics(path: str | os.PathLike[str]) -> dict[str, list[tuple[int, float]]]:
    """The scalars of a ``metrics.json`` (or of the one in directory ``path``): ``{name: [(iteration, value)]}``.

    Each list is sorted by iteration; restarts are resolved as described in the module docstring; values
    that are not finite numbers (``NaN`` AP of an empty category, strings) are left out.

    Raises:
        FileNotFoundError: when the file (or ``metrics.json`` in the directory) does not exist.
        ValueError: naming the file and line, for a line that is not a JSON object with an integer
            ``"iteration"``, or when the file has no line at all.
    """
    file = _metrics_file(path)
    series: dict[str, dict[int, float]] = {}
    last_iteration: int | None = None
    with open(file, encoding="utf-8") as f:
        lines = [(n, line.strip()) for n, line in enumerate(f, start=1) if line.strip()]
    if not lines:
        raise ValueError(f"{file} is empty: nothing to plot")
    for number, line in lines:
        record = _parse_line(file, number, line)
        iteration = record["iteration"]
        if last_iteration is not None and iteration < last_iteration:
            # a resumed run writes again from here: forget what the interrupted run wrote from here on
            for values in series.values():
                for it in [it for it in values if it >= iteration]:
                    del values[it]
        last_iteration = iteration
        for name, value in record.items():
            if name == "iteration" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                series.setdefault(name, {})[iteration] = float(value)
    return {name: sorted(values.items()) for name, values in sorted(series.items()) if values}


def plot_metrics(path: str | os.PathLike[str], output: str | os.PathLike[str] | None = None) -> str:
    """Draw the loss, learning-rate and AP curves of ``path`` (a ``metrics.json`` or its directory) into a PNG.

    Args:
        path: an output directory holding ``metrics.json``, or the file itself.
        output: the PNG to write; by default ``metrics.png`` next to ``metrics.json``.

    Returns:
        The path of the PNG written.

    Raises:
        ModuleNotFoundError: when matplotlib is not installed (with the command that installs it).
        FileNotFoundError, ValueError: as :func:`load_metrics`.
    """
    metrics = load_metrics(path)
    figure_cls = _figure_class()
    if output is None:
        output = os.path.join(os.path.dirname(_metrics_file(path)), "metrics.png")
    output = os.fspath(output)
    fig = figure_cls(figsize=(9, 10), layout="constrained")
    loss_ax, lr_ax, ap_ax = fig.subplots(3, 1, sharex=True)
    losses = {k: v for k, v in metrics.items() if k == "total_loss" or k.startswith("loss_")}
    aps = {k: v for k, v in metrics.items() if k.rsplit("/", 1)[-1] in _AP_NAMES and "/" in k}
    _draw(loss_ax, losses, "loss", emphasize="total_loss")
    _draw(lr_ax, {k: v for k, v in metrics.items() if k == "lr"}, "learning rate")
    _draw(ap_ax, aps, "evaluation (AP, AP50)", marker="o")
    ap_ax.set_xlabel("iteration")
    fig.suptitle(_metrics_file(path))
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    fig.savefig(output, dpi=100)
    return output


def add_plot_parser(subparsers: Any) -> None:
    """Register the ``plot`` subcommand on the ``d2lightning`` parser's subparsers."""
    parser = subparsers.add_parser(
        "plot",
        help="plot the loss, learning-rate and AP curves of an output directory's metrics.json",
        description=(
            "Draw the losses (total_loss, loss_*), the learning rate (lr) and the evaluation results (*/AP, "
            "*/AP50) over the iterations of OUTPUT_DIR/metrics.json (detectron2's format) into a PNG. Runs resumed "
            "into the same folder are handled: the last value written for an iteration wins."
        ),
    )
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="a training output directory (or a metrics.json)")
    parser.add_argument("--output", metavar="PNG", help="where to write the PNG (default: OUTPUT_DIR/metrics.png)")
    parser.set_defaults(func=_plot_command)


def _plot_command(args: argparse.Namespace) -> int:
    try:
        written = plot_metrics(args.output_dir, args.output)
    except ModuleNotFoundError as e:  # not among the errors the CLI reports itself
        print(f"d2lightning plot: error: {e}", file=sys.stderr)
        return 1
    print(written)
    return 0


def _metrics_file(path: str | os.PathLike[str]) -> str:
    path = os.fspath(path)
    file = os.path.join(path, METRICS_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        where = f"no {METRICS_FILE} in {path}" if os.path.isdir(path) else f"{path} does not exist"
        raise FileNotFoundError(f"{where}: give a training output directory (OUTPUT_DIR) or a {METRICS_FILE} file")
    return file


def _parse_line(file: str, number: int, line: str) -> Mapping[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}, line {number}: not JSON ({e.msg}): {line[:80]!r}") from None
    iteration = record.get("iteration") if isinstance(record, dict) else None
    if isinstance(iteration, bool) or not isinstance(iteration, int):
        raise ValueError(f"{file}, line {number}: expected an object with an integer 'iteration', got {line[:80]!r}")
    return record


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "plotting needs matplotlib, an optional dependency: pip install 'd2lightning[plot]'", name="matplotlib"
        ) from None
    return Figure


def _draw(
    ax: Any, curves: Mapping[str, list[tuple[int, float]]], title: str, emphasize: str = "", marker: str = ""
) -> None:
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if not curves:
        ax.text(0.5, 0.5, "not in metrics.json", ha="center", va="center", transform=ax.transAxes, color="gray")
        return
    for name, points in curves.items():
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, label=name, marker=marker, linewidth=2.2 if name == emphasize else 1.2)
    ax.legend(fontsize="small", loc="best")

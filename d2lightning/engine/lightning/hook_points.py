"""Where each detectron2 hook method runs in a Lightning fit: the one table that the dispatch and the docs use.

Plain data, no Lightning import. :class:`~d2lightning.engine.hook_base.HookBase` defines its Lightning hook
methods from :data:`HOOK_POINTS`; :class:`~d2lightning.engine.lightning.run.TrainingRun` calls the methods that are
the run's; :func:`markdown_table` renders the table shown in the README and the docs (a test keeps them equal).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HOOK_METHODS", "HOOK_POINTS", "HookPoint", "markdown_table"]


@dataclass(frozen=True)
class HookPoint:
    """One detectron2 hook method and where it runs in a Lightning fit.

    Attributes:
        method: detectron2's hook method.
        lightning: the Lightning hook points it runs at.
        by_lightning: True: Lightning calls it on each hook at the hook's place among the Trainer's callbacks.
            False: the run calls it on every hook in registration order, as detectron2's ``trainer.before_train()``
            / ``trainer.after_train()`` do, before Lightning's callbacks get the same hook point.
        iteration: the value of ``trainer.iter`` there.
        note: what a reader needs to know about the moment, or "".
    """

    method: str
    lightning: tuple[str, ...]
    by_lightning: bool
    iteration: str
    note: str = ""


#: detectron2's hook methods, in the order of a run.
HOOK_POINTS: tuple[HookPoint, ...] = (
    HookPoint("before_train", ("on_train_start",), False, "`start_iter`", "after a checkpoint is restored"),
    HookPoint("before_step", ("on_train_batch_start",), True, "`global_step`"),
    HookPoint("after_backward", ("on_after_backward",), True, "`global_step`"),
    HookPoint("after_step", ("on_train_batch_end",), True, "`global_step - 1`"),
    HookPoint(
        "after_train",
        ("on_train_end", "on_exception"),
        False,
        "`max_iter`, or the failing iteration",
        "detectron2 runs it in a `finally`",
    ),
)

#: The names of detectron2's hook methods.
HOOK_METHODS: tuple[str, ...] = tuple(point.method for point in HOOK_POINTS)


def markdown_table() -> str:
    """The table as Markdown: one row per hook method, with its Lightning hook points, caller and ``iter``."""
    rows = [
        "| detectron2 hook method | Lightning hook point | called by | `trainer.iter` there |",
        "|---|---|---|---|",
    ]
    for point in HOOK_POINTS:
        where = ", and ".join(f"`{name}`" for name in point.lightning)
        if point.note:
            where += f" ({point.note})"
        caller = (
            "Lightning, each hook at its place in the callbacks"
            if point.by_lightning
            else "the run, every hook in order"
        )
        rows.append(f"| `{point.method}` | {where} | {caller} | {point.iteration} |")
    return "\n".join(rows) + "\n"

"""The hook-point table is said once: the dispatch of ``HookBase`` and the README's table both come from it."""

from __future__ import annotations

import re
from typing import Any

import pytest

from d2lightning.engine import HookBase
from d2lightning.engine.lightning.hook_points import HOOK_METHODS, HOOK_POINTS, markdown_table
from tests.helpers import REPO


def test_the_readme_shows_the_table_the_dispatch_uses() -> None:
    readme = (REPO / "README.md").read_text()
    shown = re.search(r"<!-- --8<-- \[start:hook-points\] -->\n(.*?)<!-- --8<-- \[end:hook-points\] -->", readme, re.S)
    assert shown is not None
    assert shown.group(1) == markdown_table()
    assert '--8<-- "README.md:hook-points"' in (REPO / "docs" / "detectron2.md").read_text()


def test_the_table_lists_detectron2s_hook_methods_in_the_order_of_a_run() -> None:
    assert HOOK_METHODS == ("before_train", "before_step", "after_backward", "after_step", "after_train")
    assert [p.lightning for p in HOOK_POINTS] == [
        ("on_train_start",),
        ("on_train_batch_start",),
        ("on_after_backward",),
        ("on_train_batch_end",),
        ("on_train_end", "on_exception"),
    ]


class Calls(HookBase):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def before_train(self) -> None:
        self.calls.append("before_train")

    def before_step(self) -> None:
        self.calls.append("before_step")

    def after_backward(self) -> None:
        self.calls.append("after_backward")

    def after_step(self) -> None:
        self.calls.append("after_step")

    def after_train(self) -> None:
        self.calls.append("after_train")


_ARGS: dict[str, tuple[Any, ...]] = {
    "on_train_batch_start": (None, 0),
    "on_after_backward": (),
    "on_train_batch_end": (None, None, 0),
}


@pytest.mark.parametrize("point", [p for p in HOOK_POINTS if p.by_lightning], ids=lambda p: p.method)
def test_each_lightning_hook_point_of_hookbase_calls_the_tables_method(point: Any) -> None:
    hook = Calls()
    for name in point.lightning:
        getattr(hook, name)(None, None, *_ARGS[name])
    assert hook.calls == [point.method] * len(point.lightning)


@pytest.mark.parametrize("point", [p for p in HOOK_POINTS if not p.by_lightning], ids=lambda p: p.method)
def test_the_runs_methods_are_not_lightning_hooks_of_hookbase(point: Any) -> None:
    # before_train / after_train are called by the run, every hook in order: HookBase leaves the Lightning hook alone
    for name in point.lightning:
        assert "HookBase" not in getattr(HookBase, name).__qualname__

"""``d2lightning._compat``: the shared event storage and the hook-needs check.

The first part runs everywhere, against a stand-in ``detectron2.utils.events`` module put in ``sys.modules``
(the bridge only ever looks there); the second part needs a real detectron2.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
import torch

from d2lightning import _compat
from d2lightning.engine import SimpleTrainer, hooks
from d2lightning.engine import adapter as adapter_module
from d2lightning.utils.events import EventStorage, get_event_storage
from tests.helpers.detectron2_runs import MODES, d2_recorder, requires_detectron2, train_d2lightning
from tests.helpers.training import SimpleModel, infinite_loader


@pytest.fixture
def fake_d2_stack(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """A stand-in for a loaded detectron2: ``sys.modules`` gets ``detectron2`` and its ``utils.events`` stack."""
    events = types.ModuleType("detectron2.utils.events")
    events._CURRENT_STORAGE_STACK = []  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "detectron2", types.ModuleType("detectron2"))
    monkeypatch.setitem(sys.modules, "detectron2.utils.events", events)
    return events._CURRENT_STORAGE_STACK  # type: ignore[attr-defined]


def _fake_d2_class(name: str, module: str, **attrs: Any) -> type:
    return type(name, (), {"__module__": module, **attrs})


# ---------------------------------------------------------------- the storage bridge
def test_an_open_storage_is_also_detectron2s_current_storage(fake_d2_stack: list[Any]) -> None:
    with EventStorage(3) as outer:
        assert fake_d2_stack == [outer]
        with EventStorage() as inner:
            assert fake_d2_stack == [outer, inner]
            assert get_event_storage() is inner
        assert fake_d2_stack == [outer]
    assert fake_d2_stack == []


def test_nothing_is_shared_when_detectron2_is_not_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "detectron2.utils.events", raising=False)
    with EventStorage() as storage:
        assert not hasattr(storage, "_detectron2_storage_stack")
        # detectron2 imported while the storage is open: it does not see it, and closing it leaves it alone
        events = types.ModuleType("detectron2.utils.events")
        events._CURRENT_STORAGE_STACK = []  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "detectron2.utils.events", events)
    assert events._CURRENT_STORAGE_STACK == []  # type: ignore[attr-defined]


def test_unshare_removes_only_our_storage_when_another_is_above_it(fake_d2_stack: list[Any]) -> None:
    storage = EventStorage().__enter__()
    foreign = object()  # e.g. a detectron2 EventStorage someone left open
    fake_d2_stack.append(foreign)
    _compat.unshare_storage(storage)
    assert fake_d2_stack == [foreign]
    _compat.unshare_storage(storage)  # idempotent
    assert fake_d2_stack == [foreign]
    fake_d2_stack.pop()
    storage.__exit__(None, None, None)
    assert fake_d2_stack == []


def _counting(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, counts: dict[str, int]) -> None:
    original = getattr(owner, name)
    counts[name] = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        counts[name] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


@pytest.mark.parametrize("mode", MODES)
def test_a_run_shares_its_storage_once_not_per_iteration(
    mode: str, fake_d2_stack: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    counts: dict[str, int] = {}
    _counting(monkeypatch, _compat, "share_storage", counts)
    _counting(monkeypatch, _compat, "unshare_storage", counts)
    _counting(monkeypatch, adapter_module, "check_detectron2_hooks", counts)
    seen: list[tuple[str, int, bool]] = []

    def look(point: str) -> Any:
        return lambda t: seen.append((point, t.iter, fake_d2_stack[-1] is t.storage))

    hook = hooks.CallbackHook(
        before_train=look("bt"), before_step=look("bs"), after_step=look("as"), after_train=look("at")
    )
    model = SimpleModel()
    train_d2lightning(mode, model, torch.optim.SGD(model.parameters(), 0.1), [hook], 0, 6)
    assert counts == {"share_storage": 1, "unshare_storage": 1, "check_detectron2_hooks": 1}
    assert seen == [("bt", 0, True)] + [(p, i, True) for i in range(6) for p in ("bs", "as")] + [("at", 6, True)]
    assert fake_d2_stack == []


# ---------------------------------------------------------------- what detectron2 hooks need from the trainer
def _fake_lr_scheduler(module: str = "detectron2.engine.hooks") -> type:
    return _fake_d2_class(
        "LRScheduler",
        module,
        __init__=lambda self, optimizer=None, scheduler=None: self.__dict__.update(
            _optimizer=optimizer, _scheduler=scheduler
        ),
    )


class _Trainer:
    optimizer = object()


@pytest.mark.usefixtures("fake_d2_stack")
def test_lr_scheduler_without_scheduler_needs_trainer_scheduler() -> None:
    hook = _fake_lr_scheduler()(optimizer=None, scheduler=None)
    with pytest.raises(AttributeError) as info:
        _compat.check_detectron2_hooks(_Trainer(), [hook])
    assert str(info.value) == (
        "detectron2.engine.hooks.LRScheduler was created without scheduler= and reads trainer.scheduler instead, "
        "but the trainer it runs in (_Trainer) has no attribute 'scheduler'. Pass scheduler=... to the hook, or "
        "set trainer.scheduler before training."
    )
    trainer = _Trainer()
    trainer.scheduler = None  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match=r"\(_Trainer\) has scheduler=None\. Pass scheduler="):
        _compat.check_detectron2_hooks(trainer, [hook])
    trainer.optimizer = None  # type: ignore[assignment]
    trainer.scheduler = object()  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match=r"without optimizer= and reads trainer\.optimizer instead"):
        _compat.check_detectron2_hooks(trainer, [hook])


@pytest.mark.usefixtures("fake_d2_stack")
def test_needs_met_by_the_hook_or_the_trainer_pass() -> None:
    cls = _fake_lr_scheduler()
    _compat.check_detectron2_hooks(_Trainer(), [cls(scheduler=object())])
    trainer = _Trainer()
    trainer.scheduler = object()  # type: ignore[attr-defined]
    _compat.check_detectron2_hooks(trainer, [cls()])
    # not detectron2's own class (a user's hook of the same name): not checked
    _compat.check_detectron2_hooks(_Trainer(), [_fake_lr_scheduler("my_project.hooks")()])


def test_needs_are_not_checked_when_detectron2_was_never_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "detectron2", raising=False)
    _compat.check_detectron2_hooks(_Trainer(), [_fake_lr_scheduler()()])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.usefixtures("fake_d2_stack")
def test_training_fails_before_any_hook_runs_when_a_need_is_not_met(mode: str) -> None:
    calls: list[Any] = []
    recorder = hooks.CallbackHook(before_train=lambda t: calls.append("before_train"))
    bad = _fake_lr_scheduler()(optimizer=None, scheduler=None)
    bad.after_step = lambda: calls.append("after_step")  # a hook method, so it registers as a hook
    model = SimpleModel()
    with pytest.raises(AttributeError, match=r"LRScheduler was created without scheduler=.*\(SimpleTrainer\)"):
        train_d2lightning(mode, model, torch.optim.SGD(model.parameters(), 0.1), [recorder, bad], 0, 3)
    assert calls == []
    assert model.calls == 0


# ---------------------------------------------------------------- small helpers
def test_require_detectron2(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"module must be 'detectron2' or a 'detectron2\.\*' submodule, got 'torch'"):
        _compat.require_detectron2("X", "torch")
    monkeypatch.setattr(_compat, "detectron2_available", lambda: False)
    with pytest.raises(ImportError, match=r"^checkpoint crossover needs detectron2, which is not installed: see "):
        _compat.require_detectron2("checkpoint crossover")


def test_is_detectron2_object() -> None:
    assert _compat.is_detectron2_object(_fake_d2_class("PeriodicWriter", "detectron2.engine.hooks")())
    assert not _compat.is_detectron2_object(_fake_d2_class("PeriodicWriter", "detectron2x.hooks")())
    assert not _compat.is_detectron2_object(hooks.PeriodicWriter([]))


# ---------------------------------------------------------------- with a real detectron2
@requires_detectron2
@pytest.mark.parametrize("mode", MODES)
def test_detectron2_get_event_storage_is_the_runs_storage(mode: str) -> None:
    from detectron2.utils import events as d2_events

    seen: list[tuple[str, int, bool]] = []

    def look(point: str) -> Any:
        return lambda t: seen.append((point, t.iter, d2_events.get_event_storage() is t.storage))

    hook = hooks.CallbackHook(
        before_train=look("bt"), before_step=look("bs"), after_step=look("as"), after_train=look("at")
    )
    model = SimpleModel()
    before = list(d2_events._CURRENT_STORAGE_STACK)
    train_d2lightning(mode, model, torch.optim.SGD(model.parameters(), 0.1), [hook], 0, 2)
    assert seen == [
        ("bt", 0, True),
        ("bs", 0, True),
        ("as", 0, True),
        ("bs", 1, True),
        ("as", 1, True),
        ("at", 2, True),
    ]
    assert before == d2_events._CURRENT_STORAGE_STACK


@requires_detectron2
def test_a_detectron2_storage_opened_inside_a_run_nests() -> None:
    from detectron2.utils import events as d2_events

    seen: list[Any] = []

    def nested(trainer: Any) -> None:
        with d2_events.EventStorage(100) as d2_storage:
            seen.append(d2_events.get_event_storage() is d2_storage)
            seen.append(get_event_storage() is trainer.storage)  # d2lightning's own accessor is unaffected
        seen.append(d2_events.get_event_storage() is trainer.storage)

    trainer = SimpleTrainer(SimpleModel(), infinite_loader(), torch.optim.SGD(SimpleModel().parameters(), 0.1))
    trainer.register_hooks([hooks.CallbackHook(after_step=nested)])
    trainer.train(0, 1)
    assert seen == [True, True, True]


@requires_detectron2
def test_real_lr_scheduler_needs_are_checked() -> None:
    from detectron2.engine import hooks as d2_hooks

    calls: list[Any] = []
    model = SimpleModel()
    with pytest.raises(AttributeError) as info:
        train_d2lightning(
            "simple",
            model,
            torch.optim.SGD(model.parameters(), 0.1),
            [d2_recorder("A", calls), d2_hooks.LRScheduler()],
            0,
            3,
        )
    assert str(info.value) == (
        "detectron2.engine.hooks.LRScheduler was created without scheduler= and reads trainer.scheduler instead, "
        "but the trainer it runs in (SimpleTrainer) has no attribute 'scheduler'. Pass scheduler=... to the hook, "
        "or set trainer.scheduler before training."
    )
    assert calls == []


@requires_detectron2
def test_storage_and_history_buffer_offer_everything_detectron2s_do() -> None:
    from detectron2.utils import events as d2_events

    from d2lightning.utils.history_buffer import HistoryBuffer

    def names(obj: Any, private: bool) -> set[str]:
        found = {n for n in dir(obj) if not n.startswith("__")} | set(vars(obj))
        return found if private else {n for n in found if not n.startswith("_")}

    # detectron2's writers read the storage's private _vis_data and _histograms too; buffers only publicly
    assert names(d2_events.EventStorage(), True) - names(EventStorage(), True) == set()
    assert names(d2_events.HistoryBuffer(), False) - names(HistoryBuffer(), False) == set()

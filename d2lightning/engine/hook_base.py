"""detectron2's ``HookBase`` as a Lightning ``Callback``, and :class:`HookCallback` for any other hook.

Where each hook method runs is the table :data:`~d2lightning.engine.lightning.hook_points.HOOK_POINTS` (rendered in
the README): ``before_step``, ``after_backward`` and ``after_step`` are the Lightning hooks ``HookBase`` defines from
that table, which Lightning calls at the hook's place among the Trainer's callbacks; ``before_train`` and
``after_train`` are called by the fit's :class:`~d2lightning.engine.lightning.run.TrainingRun` (the trainer's own
``before_train``/``after_train``, every hook in order, as detectron2's). A hook set up in a Trainer the user built
around a LightningModule that is not d2lightning's starts that fit's run, so detectron2 hooks work with any
LightningModule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from d2lightning.engine.lightning.hook_points import HOOK_METHODS, HOOK_POINTS
from d2lightning.engine.lightning.run import TrainingRun
from d2lightning.engine.lightning.trainer_view import LightningTrainerView

__all__ = ["HookBase", "HookCallback", "as_callback"]


class _UserValueFirst:
    """A hook attribute Lightning also assigns (it sets ``callback.log``/``log_dict`` to the module's methods).

    A detectron2 hook may already use ``self.log`` for its own data; Lightning's assignment must not replace
    it. The hook's own value wins; Lightning's is kept aside and used only when the hook has none.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.aside = f"_lightning_{name}"

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        d = obj.__dict__
        if self.name in d:
            return d[self.name]
        if self.aside in d:
            return d[self.aside]
        raise AttributeError(self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        from_lightning = isinstance(getattr(value, "__self__", None), pl.LightningModule)
        obj.__dict__[self.aside if from_lightning else self.name] = value


class HookBase(Callback):
    """Base class for hooks that can be registered with ``TrainerBase`` — and a Lightning ``Callback``.

    Each hook can implement 5 methods. The way they are called is::

        hook.before_train()
        for iter in range(start_iter, max_iter):
            hook.before_step()
            trainer.run_step()          # calls hook.after_backward() after the backward pass
            hook.after_step()
        iter += 1
        hook.after_train()               # also when training raised

    Notes:
        1. In the hook methods, ``self.trainer`` is a weak proxy of the trainer, with ``iter``, ``start_iter``,
           ``max_iter``, ``storage``, ``model``, ``optimizer``, ``data_loader`` and whatever else the owning
           trainer has. ``trainer.iter`` is the iteration being run (0-based).
        2. A hook that does something in ``before_step`` can often do it at the end of ``after_step`` instead;
           ``before_step`` should take negligible time.
        3. Because a hook is a Lightning ``Callback``, it can go straight into
           ``lightning.pytorch.Trainer(callbacks=[...])`` next to Lightning's callbacks; its per-step methods run
           at its place in that list (see the table above).
        4. A hook with state returns it from ``state_dict`` and takes it back in ``load_state_dict``; it is
           saved under its class ``__qualname__`` in both detectron2 and Lightning checkpoints.
    """

    trainer: Any = None
    log = _UserValueFirst()
    log_dict = _UserValueFirst()

    def before_train(self) -> None:
        """Called before the first iteration."""

    def after_train(self) -> None:
        """Called after the last iteration, and when training raised."""

    def before_step(self) -> None:
        """Called before each iteration."""

    def after_backward(self) -> None:
        """Called after the backward pass of each iteration."""

    def after_step(self) -> None:
        """Called after each iteration."""

    # ``state_dict`` (returning ``{}``: stateless) and ``load_state_dict`` come from Lightning's Callback. A
    # stateful hook overrides both; Lightning then also saves it, under ``state_key`` (the class qualname).

    # ------------------------------------------------------------ Lightning's hook points
    @property
    def d2_hook(self) -> Any:
        """The detectron2 hook this callback carries: itself (a :class:`HookCallback` carries another object)."""
        return self

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """In a fit of a LightningModule that is not d2lightning's, start the fit's run (the first hook does)."""
        if stage == "fit" and TrainingRun.of(trainer) is None:
            TrainingRun.join(trainer, LightningTrainerView(pl_module)).bind()


def _calls(method: str) -> Callable[..., None]:
    """A Lightning hook that calls the hook's detectron2 method ``method`` (whatever Lightning passes)."""

    def lightning_hook(self: HookBase, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        getattr(self, method)()

    lightning_hook.__doc__ = f"Calls ``{method}()`` (see ``HOOK_POINTS``)."
    return lightning_hook


# The per-step detectron2 methods, at the Lightning hook points the table gives them.
for _point in HOOK_POINTS:
    if _point.by_lightning:
        for _name in _point.lightning:
            setattr(HookBase, _name, _calls(_point.method))


class HookCallback(HookBase):
    """Run any detectron2-style hook as a Lightning ``Callback``.

    The hook is duck-typed: any object with at least one of ``before_train``, ``after_train``, ``before_step``,
    ``after_backward`` and ``after_step`` (missing ones are skipped), so hooks written for a real detectron2
    install work unchanged. Its ``trainer`` attribute is set to a weak proxy of the detectron2-style trainer of
    the fit; its ``state_dict``/``load_state_dict``, if any, go into Lightning checkpoints under the hook's class
    ``__qualname__``, the key detectron2 uses.

    Args:
        hook: the hook object.

    Raises:
        TypeError: when ``hook`` has none of detectron2's hook methods.

    Example::

        trainer = pl.Trainer(max_steps=100, callbacks=[HookCallback(my_detectron2_hook)])
        trainer.fit(D2LightningModule(model, data_loader, optimizer))
    """

    def __init__(self, hook: Any) -> None:
        found = [name for name in HOOK_METHODS if callable(getattr(hook, name, None))]
        if not found:
            raise TypeError(
                f"{type(hook).__qualname__} object is not a hook: it has none of the methods {', '.join(HOOK_METHODS)}"
            )
        self.hook = hook
        # bound once: Lightning calls these at every step
        self.before_step = getattr(hook, "before_step", _nothing)  # type: ignore[method-assign]
        self.after_backward = getattr(hook, "after_backward", _nothing)  # type: ignore[method-assign]
        self.after_step = getattr(hook, "after_step", _nothing)  # type: ignore[method-assign]
        if _has_own_state(hook):
            # Instance attributes: Lightning then treats this callback as stateful (and only then).
            self.state_dict = hook.state_dict  # type: ignore[method-assign]
            self.load_state_dict = hook.load_state_dict  # type: ignore[method-assign]

    @property
    def d2_hook(self) -> Any:
        return self.hook

    @property
    def state_key(self) -> str:
        return type(self.hook).__qualname__

    def __repr__(self) -> str:
        return f"HookCallback({self.hook!r})"


def _nothing() -> None:
    return None


def _has_own_state(hook: Any) -> bool:
    """Whether the hook's class defines ``state_dict`` below detectron2's (stateless) ``HookBase``."""
    for cls in type(hook).__mro__:
        if "state_dict" in vars(cls):
            return cls.__name__ != "HookBase" and callable(getattr(hook, "load_state_dict", None))
    return False


def as_callback(hook: Any) -> Callback:
    """A Lightning callback for ``hook``: itself if it already is one, else a :class:`HookCallback`."""
    return hook if isinstance(hook, Callback) else HookCallback(hook)

"""The one place where d2lightning meets a real detectron2 install (optional, never required).

Nothing here imports detectron2 at module import. What it provides:

* **Availability**: :func:`detectron2_available` / :func:`require_detectron2` (tests skip with
  :data:`DETECTRON2_MISSING_REASON` when it is absent).
* **One event storage for both libraries.** detectron2's hooks, writers and models find "the current storage"
  through ``detectron2.utils.events.get_event_storage()``, which reads detectron2's own module-level stack.
  Every d2lightning ``EventStorage`` that is entered is therefore also pushed on that stack
  (:func:`share_storage`) and taken off when it exits (:func:`unshare_storage`) — but only if
  ``detectron2.utils.events`` is already imported; otherwise nothing is done. This costs one ``sys.modules``
  lookup per storage *context* (once per training run), nothing per iteration. d2lightning's storage class
  implements the whole interface detectron2's code uses (``put_scalar(s)``, ``put_image``,
  ``put_histogram``, ``history``, ``histories``, ``latest``, ``latest_with_smoothing_hint``,
  ``count_samples``, ``iter``, ``name_scope``, ``_vis_data``, ``_histograms``, ``clear_*``), so the same object
  is shared as it is. (Making d2lightning's storage *be* detectron2's class when detectron2 is present was
  rejected: its behaviour would then depend on whether, which version of and when detectron2 was imported.)
  A storage detectron2 itself opens (``PreciseBN`` does, to discard the events of its forward passes) stays
  on detectron2's stack only, exactly as in detectron2.
* **Hook needs**: :func:`check_detectron2_hooks` verifies, when a run starts, that the trainer offers what
  detectron2's hooks will read from it, and raises a clear ``AttributeError`` naming the hook and the missing
  attribute otherwise (see :data:`TRAINER_NEEDS`).
* **detectron2 train loaders**: :func:`detectron2_train_loader_parts` takes a ``build_detection_train_loader``
  result apart (sampler, mapped dataset, DataLoader, grouping) so that ``d2lightning.data.streams`` can resume it
  exactly; recognised by detectron2's class names, read through detectron2's attributes (some private). A copy of
  its ``TrainingSampler``/``RepeatFactorTrainingSampler`` can take another seed (a resumed run adopts the seed a
  sampler drew at random in the first run).
* **detectron2 configs**: :func:`is_detectron2_cfg` recognises detectron2's yacs ``CfgNode`` (by class, without
  importing detectron2); ``DefaultTrainer`` then takes its model, optimizer, scheduler, loaders and checkpointer
  from detectron2 (:func:`detectron2_builder`, :data:`DETECTRON2_BUILDERS`), maps ``MODEL.DEVICE`` to Lightning's
  accelerator (:func:`lightning_kwargs_from_detectron2_cfg`) and sets up detectron2's logger as detectron2's
  trainer does (:func:`setup_detectron2_logger`). :func:`detectron2_default_cfg` is detectron2's ``get_cfg()``.

Limitation: a ``detectron2.utils.events`` imported for the first time *while* a d2lightning storage is open does
not see that storage (import detectron2 before training starts, as building a detectron2 model or hook does).
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import logging
import sys
from collections.abc import Iterable
from functools import lru_cache
from types import ModuleType
from typing import Any

__all__ = [
    "DETECTRON2_BUILDERS",
    "DETECTRON2_MISSING_REASON",
    "TRAINER_NEEDS",
    "check_detectron2_hooks",
    "detectron2_available",
    "detectron2_builder",
    "detectron2_default_cfg",
    "detectron2_train_loader_parts",
    "is_detectron2_cfg",
    "is_detectron2_object",
    "lightning_kwargs_from_detectron2_cfg",
    "require_detectron2",
    "setup_detectron2_logger",
    "share_storage",
    "unshare_storage",
]

DETECTRON2_MISSING_REASON = "detectron2 is not installed"
_EVENTS_MODULE = "detectron2.utils.events"
_STACK_ATTR = "_detectron2_storage_stack"  # set on a d2lightning EventStorage while detectron2's stack holds it

#: What detectron2's hooks read from ``self.trainer`` beyond the loop state every d2lightning trainer has during
#: a run (``iter``, ``start_iter``, ``max_iter``, ``storage``). ``{hook class name: ((own attribute, trainer
#: attribute, constructor argument), ...)}``: the trainer attribute is needed when the hook's own attribute is
#: None. The other hooks of ``detectron2.engine.hooks`` (IterationTimer, PeriodicWriter, PeriodicCheckpointer,
#: BestCheckpointer, EvalHook, PreciseBN, TorchProfiler, AutogradProfiler, TorchMemoryStats, CallbackHook) read
#: only the loop state.
TRAINER_NEEDS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "LRScheduler": (("_optimizer", "optimizer", "optimizer"), ("_scheduler", "scheduler", "scheduler")),
}


@lru_cache(maxsize=1)
def detectron2_available() -> bool:
    """Whether ``import detectron2`` can work (the package is installed); the answer is cached."""
    return importlib.util.find_spec("detectron2") is not None


def share_local_process_group(group: Any) -> None:
    """Give detectron2's ``comm`` the per-machine group d2lightning created (no collective, no new group).

    detectron2's ``comm.get_local_rank()`` / ``get_local_size()`` assert unless its own ``_LOCAL_PROCESS_GROUP`` is
    set, which only detectron2's ``launch`` does. A no-op when detectron2 is not installed.
    """
    if not detectron2_available():
        return
    import detectron2.utils.comm as d2_comm

    d2_comm._LOCAL_PROCESS_GROUP = group


def require_detectron2(feature: str, module: str = "detectron2") -> ModuleType:
    """Import ``module`` of detectron2 for ``feature``, or fail with a message saying how to get it.

    Args:
        feature: what needs detectron2, for the error message (e.g. ``"DetectionCheckpointer crossover"``).
        module: the detectron2 module to import, ``"detectron2"`` or a submodule (``"detectron2.engine"``).

    Raises:
        ValueError: when ``module`` is not detectron2 or one of its submodules.
        ImportError: naming ``feature`` when detectron2 is not installed.
    """
    if not isinstance(module, str) or not (module == "detectron2" or module.startswith("detectron2.")):
        raise ValueError(f"module must be 'detectron2' or a 'detectron2.*' submodule, got {module!r}")
    if not detectron2_available():
        raise ImportError(
            f"{feature} needs detectron2, which is not installed: see "
            "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
        )
    return importlib.import_module(module)


def is_detectron2_object(obj: Any) -> bool:
    """Whether ``obj``'s class is defined in detectron2 itself (module ``detectron2.*``)."""
    return type(obj).__module__.startswith("detectron2.")


# ---------------------------------------------------------------- storage bridge
def share_storage(storage: Any) -> None:
    """Make ``storage`` detectron2's current storage too, if detectron2's events module is loaded.

    Called by d2lightning's ``EventStorage.__enter__`` right after it pushed itself on d2lightning's stack.
    """
    events = sys.modules.get(_EVENTS_MODULE)
    if events is None:
        return
    stack = events._CURRENT_STORAGE_STACK
    stack.append(storage)
    setattr(storage, _STACK_ATTR, stack)


def unshare_storage(storage: Any) -> None:
    """Take ``storage`` off detectron2's stack if :func:`share_storage` put it there (idempotent).

    Normally it is on top (contexts nest); if something left a detectron2 storage open above it, only
    ``storage`` is removed and the other one stays current.
    """
    stack = storage.__dict__.pop(_STACK_ATTR, None)
    if stack is None:
        return
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is storage:
            del stack[i]
            return


# ---------------------------------------------------------------- hook needs
def check_detectron2_hooks(trainer: Any, hooks: Iterable[Any]) -> None:
    """Check that ``trainer`` has every attribute the detectron2 hooks among ``hooks`` will read from it.

    Runs once when a run starts, before any ``before_train``. Only hooks whose class is detectron2's own (module
    ``detectron2.*``) are checked: a user subclass may get what it needs elsewhere. Returns at once when
    detectron2 was never imported.

    Raises:
        AttributeError: naming the hook, the trainer attribute, the trainer's class and the fix, when the
            attribute is missing or None (e.g. ``detectron2.engine.hooks.LRScheduler()`` without a
            ``scheduler`` in a ``SimpleTrainer``, which has none; detectron2's ``DefaultTrainer`` has one).
    """
    if "detectron2" not in sys.modules:
        return
    for hook in hooks:
        needs = _needs_of(hook)
        for own, attr, arg in needs:
            if getattr(hook, own, None) is not None:
                continue
            if getattr(trainer, attr, None) is None:
                has = hasattr(trainer, attr)
                hook_name = f"{type(hook).__module__}.{type(hook).__qualname__}"
                state = f"has {attr}=None" if has else f"has no attribute {attr!r}"
                raise AttributeError(
                    f"{hook_name} was created without {arg}= and reads trainer.{attr} instead, but the trainer it "
                    f"runs in ({type(trainer).__qualname__}) {state}. Pass {arg}=... to the hook, or set "
                    f"trainer.{attr} before training."
                )


def _needs_of(hook: Any) -> tuple[tuple[str, str, str], ...]:
    if not is_detectron2_object(hook):
        return ()
    return TRAINER_NEEDS.get(type(hook).__name__, ())


# ---------------------------------------------------------------- detectron2 configs
#: What ``DefaultTrainer`` builds each of its parts with when its config is a detectron2 ``CfgNode``:
#: ``{role: (detectron2 module, attribute)}``; the role names are DefaultTrainer's factory methods.
DETECTRON2_BUILDERS: dict[str, tuple[str, str]] = {
    "build_model": ("detectron2.modeling", "build_model"),
    "build_optimizer": ("detectron2.solver", "build_optimizer"),
    "build_lr_scheduler": ("detectron2.solver", "build_lr_scheduler"),
    "build_train_loader": ("detectron2.data", "build_detection_train_loader"),
    "build_test_loader": ("detectron2.data", "build_detection_test_loader"),
    "checkpointer": ("detectron2.checkpoint", "DetectionCheckpointer"),
}

#: ``MODEL.DEVICE`` type (the part before ``:``) -> Lightning accelerator.
_ACCELERATORS = {"cpu": "cpu", "cuda": "gpu", "mps": "mps"}


def is_detectron2_cfg(cfg: Any) -> bool:
    """Whether ``cfg`` is detectron2's yacs config: its class, or a base class, is a ``CfgNode`` of ``detectron2.*``.

    Decided from the class alone, so it works (and is False for every other object) without detectron2.
    """
    return any(
        c.__name__ == "CfgNode" and str(getattr(c, "__module__", "")).startswith("detectron2.")
        for c in type(cfg).__mro__
    )


def detectron2_builder(role: str) -> Any:
    """detectron2's object for ``role`` (a key of :data:`DETECTRON2_BUILDERS`): ``"build_model"`` gives
    ``detectron2.modeling.build_model``.

    Raises:
        ValueError: for an unknown ``role``.
        ImportError: naming the role when detectron2 is not installed.
    """
    if role not in DETECTRON2_BUILDERS:
        raise ValueError(f"role must be one of {sorted(DETECTRON2_BUILDERS)}, got {role!r}")
    module, name = DETECTRON2_BUILDERS[role]
    return getattr(require_detectron2(f"DefaultTrainer.{role} with a detectron2 CfgNode", module), name)


def lightning_kwargs_from_detectron2_cfg(cfg: Any) -> dict[str, Any]:
    """``{"accelerator": ...}`` for the Lightning Trainer of a run configured by a detectron2 ``CfgNode``.

    ``MODEL.DEVICE`` ``"cpu"`` -> ``"cpu"``, ``"cuda"``/``"cuda:N"`` -> ``"gpu"`` (the device index follows the
    model, which detectron2's ``build_model`` put on that device), ``"mps"`` -> ``"mps"``.

    Raises:
        ValueError: naming ``MODEL.DEVICE`` and the accepted values for any other device.
    """
    device = str(cfg.MODEL.DEVICE)
    kind = device.split(":", 1)[0]
    if kind not in _ACCELERATORS:
        raise ValueError(
            f"MODEL.DEVICE={device!r} has no Lightning accelerator; accepted: 'cpu', 'cuda', 'cuda:<index>', 'mps'"
        )
    return {"accelerator": _ACCELERATORS[kind]}


def setup_detectron2_logger() -> None:
    """Show detectron2's own log messages on the console, as detectron2's ``DefaultTrainer`` does.

    Calls ``detectron2.utils.logger.setup_logger()`` unless the ``"detectron2"`` logger already logs INFO
    (``default_setup`` of a detectron2 script, or the user, set it up).

    Raises:
        ImportError: when detectron2 is not installed.
    """
    if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
        require_detectron2("detectron2's logger", "detectron2.utils.logger").setup_logger()


def detectron2_default_cfg() -> Any:
    """A fresh ``detectron2.config.get_cfg()``: detectron2's complete default config.

    Raises:
        ImportError: when detectron2 is not installed.
    """
    return require_detectron2("detectron2's default config", "detectron2.config").get_cfg()


# ---------------------------------------------------------------- detectron2 train loaders
def _is_d2_class(obj: Any, module: str, name: str) -> bool:
    cls = type(obj)
    return cls.__module__ == module and cls.__name__ == name


def detectron2_train_loader_parts(loader: Any) -> dict[str, Any] | None:
    """What a detectron2 ``build_detection_train_loader`` result is made of, or None for any other object.

    Recognised (yacs and LazyConfig forms build the same objects): a ``torch.utils.data.DataLoader`` over
    ``ToIterableDataset(dataset, sampler)``; with aspect-ratio grouping, ``AspectRatioGroupedDataset`` over such a
    DataLoader, optionally inside ``MapDataset(..., collate_fn)``. Returns ``{"dataset", "sampler", "loader",
    "chunk_size", "group_batch_size", "group_collate", "dataset_dicts", "sampler_seed", "reseed"}`` (see
    ``d2lightning.data.streams.LoaderParts``); ``dataset_dicts`` is the unmapped list under detectron2's
    ``MapDataset`` when it is detectron2's ``DatasetFromList``, else None. None also when the sampler shards by
    worker itself (``shard_sampler=False`` with several workers) or the DataLoader yields out of order: such a
    stream cannot be continued from a position. ``sampler_seed`` and ``reseed(seed)`` (a copy of the sampler with
    another seed) are given for detectron2's ``TrainingSampler`` and ``RepeatFactorTrainingSampler``, else None.
    """
    if "detectron2" not in sys.modules:
        return None
    from torch.utils.data import DataLoader

    common = "detectron2.data.common"
    obj, group_batch_size, group_collate = loader, None, None
    if _is_d2_class(obj, common, "_MapIterableDataset"):
        obj, group_collate = obj._dataset, obj._map_func
    if _is_d2_class(obj, common, "AspectRatioGroupedDataset"):
        obj, group_batch_size = obj.dataset, int(obj.batch_size)
    elif group_collate is not None:
        return None
    if not isinstance(obj, DataLoader) or not _is_d2_class(obj.dataset, common, "ToIterableDataset"):
        return None
    iterable: Any = obj.dataset
    if (not iterable.shard_sampler and obj.num_workers > 1) or not getattr(obj, "in_order", True):
        return None
    dataset = iterable.dataset
    dicts = None
    if _is_d2_class(dataset, common, "MapDataset") and _is_d2_class(dataset._dataset, common, "DatasetFromList"):
        dicts = dataset._dataset
    sampler = iterable.sampler
    return {
        "dataset": dataset,
        "sampler": sampler,
        "loader": obj,
        "chunk_size": int(iterable.shard_chunk_size),
        "group_batch_size": group_batch_size,
        "group_collate": group_collate,
        "dataset_dicts": dicts,
        "sampler_seed": _reseedable_seed(sampler),
        "reseed": functools.partial(_reseeded, sampler) if _reseedable_seed(sampler) is not None else None,
    }


_RESEEDABLE = ("TrainingSampler", "RepeatFactorTrainingSampler")


def _reseedable_seed(sampler: Any) -> int | None:
    """The shuffle seed of detectron2's ``TrainingSampler``/``RepeatFactorTrainingSampler`` (exactly these: it is
    read when iterating only), else None."""
    if any(_is_d2_class(sampler, "detectron2.data.samplers.distributed_sampler", n) for n in _RESEEDABLE):
        return int(sampler._seed)
    return None


def _reseeded(sampler: Any, seed: int) -> Any:
    """A copy of ``sampler`` (see :func:`_reseedable_seed`) that shuffles with ``seed``; ``sampler`` is unchanged."""
    twin = copy.copy(sampler)
    twin._seed = int(seed)
    return twin

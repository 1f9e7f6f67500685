"""Resumable training streams: a train loader's batches, with a state that continues them exactly elsewhere.

:func:`resumable_stream` recognises a loader and returns a :class:`TrainStream` (or None for a loader it cannot
resume). The engine, on every rank: creates the stream when training starts; at resume calls
``load_state_dict(saved)`` (or ``seek(num_batches)`` when the checkpoint has no stream state, logging the returned
text if any) before the first ``next``; takes ``state_dict()`` whenever it writes a checkpoint (no collective).

What each loader gets:

========================================================  ==================================================
loader                                                    stream
========================================================  ==================================================
anything with ``state_dict``/``load_state_dict``          :class:`StatefulLoaderStream` (its own state)
(torchdata's ``StatefulDataLoader``)
d2lightning's ``build_detection_train_loader``            :class:`StartIterationStream` (exact from the count)
detectron2's ``build_detection_train_loader``             :class:`SampledStream` (capture and restore)
anything else                                             None (:func:`unresumable_loader_message` says why)
========================================================  ==================================================
"""

from __future__ import annotations

from typing import Any

from d2lightning import _compat
from d2lightning.data.build import _BatchDataLoader
from d2lightning.data.streams.base import StreamStateError, TrainStream
from d2lightning.data.streams.loaders import StartIterationStream, StatefulLoaderStream
from d2lightning.data.streams.sampled import LoaderParts, SampledStream

__all__ = [
    "LoaderParts",
    "SampledStream",
    "StartIterationStream",
    "StatefulLoaderStream",
    "StreamStateError",
    "TrainStream",
    "resumable_stream",
    "unresumable_loader_message",
]


def resumable_stream(loader: Any) -> TrainStream | None:
    """The resumable stream of ``loader``, or None when it is none of the loaders in the module's table."""
    if callable(getattr(loader, "state_dict", None)) and callable(getattr(loader, "load_state_dict", None)):
        return StatefulLoaderStream(loader)
    if isinstance(loader, _BatchDataLoader):
        return StartIterationStream(loader)
    parts = _compat.detectron2_train_loader_parts(loader)
    if parts is not None:
        return SampledStream(LoaderParts(**parts, name=f"detectron2's train loader ({_describe(parts)})"))
    return None


def unresumable_loader_message(loader: Any, iteration: int) -> str:
    """One line for the engine to log when a run resumes at ``iteration`` on a loader :func:`resumable_stream`
    does not recognise."""
    kind = f"{type(loader).__module__}.{type(loader).__qualname__}"
    return (
        f"The train loader {kind} cannot be resumed at iteration {iteration}: its stream restarts from the first "
        "batch, so the data differs from an uninterrupted run. Give it state_dict()/load_state_dict() (e.g. "
        "torchdata's StatefulDataLoader), or build it with build_detection_train_loader, to resume exactly"
    )


def _describe(parts: dict[str, Any]) -> str:
    loader = parts["loader"]
    grouping = ", aspect-ratio grouping" if parts["group_batch_size"] is not None else ""
    return f"{type(parts['sampler']).__name__}, {loader.num_workers} workers{grouping}"

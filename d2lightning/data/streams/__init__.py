"""Resumable training streams: a train loader's batches, with a state that continues them exactly elsewhere.

:func:`resumable_stream` recognises a loader and returns a :class:`TrainStream` (or None for a loader it cannot
resume). The engine, on every rank:

1. ``stream = resumable_stream(loader)`` when training starts; None: iterate the loader as it is and, at resume, log
   ``unresumable_loader_message(loader, iteration)``.
2. At resume, before the first ``next``: ``stream.load_state_dict(saved)`` with this rank's saved state. When the
   checkpoint holds none (written by detectron2 or an older d2lightning): ``warning = stream.seek(num_batches)``
   (``num_batches`` = iterations done * batches per iteration), logging ``warning`` when it is not None. A
   :class:`StreamStateError` says in one line what changed (dataset size, batch size, sampler, its seed, number of
   processes, workers, grouping): log it as a warning and the stream restarts from its first batch — or refuse to
   resume where exactness was asked for. (Seeking from the count then would place a changed stream at a position
   that means nothing for the old run.)
3. Restore the global RNG states before or after: a resumed stream's first ``next`` draws nothing from them
   (a fresh stream's first ``next`` draws the DataLoader's base seed from torch's generator, as ``iter(loader)``).
4. ``stream.state_dict()`` whenever a checkpoint is written: this rank's state, no collective; a few hundred bytes,
   plus ~10 KB per DataLoader worker and per image waiting in the aspect-ratio buckets on detectron2's loader.

What each loader gets:

| loader | stream |
|---|---|
| with ``state_dict``/``load_state_dict`` (``StatefulDataLoader``) | :class:`StatefulLoaderStream`: its own state |
| d2lightning's ``build_detection_train_loader`` (a sampler with ``set_start``) | :class:`StartIterationStream` |
| any other loader with ``set_start_iteration(n)`` | :class:`SeekableLoaderStream`: the batch count |
| detectron2's ``build_detection_train_loader`` | :class:`SampledStream`: capture and restore |
| anything else | None; :func:`unresumable_loader_message` says why |
"""

from __future__ import annotations

from typing import Any

from d2lightning import _compat
from d2lightning.data.build import _BatchDataLoader
from d2lightning.data.streams.base import StreamBase, StreamStateError, TrainStream
from d2lightning.data.streams.loaders import SeekableLoaderStream, StartIterationStream, StatefulLoaderStream
from d2lightning.data.streams.sampled import LoaderParts, SampledStream

__all__ = [
    "LoaderParts",
    "SampledStream",
    "SeekableLoaderStream",
    "StartIterationStream",
    "StatefulLoaderStream",
    "StreamStateError",
    "TrainStream",
    "resumable_stream",
    "unresumable_loader_message",
]


def resumable_stream(loader: Any) -> TrainStream | None:
    """The resumable stream of ``loader``, or None when it is none of the loaders in the module's table (a stream
    is returned as it is)."""
    if isinstance(loader, StreamBase):
        return loader
    if callable(getattr(loader, "state_dict", None)) and callable(getattr(loader, "load_state_dict", None)):
        return StatefulLoaderStream(loader)
    if isinstance(loader, _BatchDataLoader) and loader.seekable:
        return StartIterationStream(loader)
    if isinstance(loader, _BatchDataLoader):  # its sampler cannot seek: resumable by neither way below
        return None
    if callable(getattr(loader, "set_start_iteration", None)):
        return SeekableLoaderStream(loader)
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

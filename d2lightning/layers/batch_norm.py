"""Precise BatchNorm statistics: fvcore's ``nn.precise_bn`` (``update_bn_stats``, ``get_bn_modules``).

During training a BN layer's running statistics are an exponential moving average over batches seen by a
model whose weights kept changing. :func:`update_bn_stats` replaces them with the true statistics of the
current model over a fixed number of batches, as detectron2's ``PreciseBN`` hook does.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from d2lightning.utils import comm
from d2lightning.utils.validation import check_int

__all__ = ["BN_MODULE_TYPES", "get_bn_modules", "update_bn_stats"]

logger = logging.getLogger(__name__)

#: The layer types whose statistics are re-estimated: every torch BatchNorm (1d/2d/3d, lazy, SyncBatchNorm)
#: and their subclasses (detectron2's ``NaiveSyncBatchNorm`` included).
BN_MODULE_TYPES: tuple[type[nn.Module], ...] = (_BatchNorm,)


def get_bn_modules(model: nn.Module) -> list[nn.Module]:
    """fvcore ``get_bn_modules``: the BN layers of ``model`` in training mode that track running statistics.

    Layers created with ``track_running_stats=False`` have no statistics to estimate and are left out (fvcore
    lists them and then fails on their missing buffers).

    Raises:
        TypeError: when ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__qualname__}")
    return [m for m in model.modules() if isinstance(m, BN_MODULE_TYPES) and m.training and m.running_mean is not None]


class _Moments:
    """Per-channel element count, sum and sum of squares of a BN layer's inputs, in float64."""

    def __init__(self, like: torch.Tensor) -> None:
        dtype = torch.float32 if like.device.type == "mps" else torch.float64  # MPS has no float64
        self.count = torch.zeros(1, dtype=dtype, device=like.device)
        self.sum = torch.zeros(like.shape, dtype=dtype, device=like.device)
        self.sum_sq = torch.zeros(like.shape, dtype=dtype, device=like.device)

    def add(self, x: torch.Tensor) -> None:
        n = x.numel() // x.shape[1]  # every position of a channel (batch and spatial) is a sample
        if n == 0:
            return
        dims = [0, *range(2, x.dim())]
        # var_mean is numerically stable within a batch; accumulating n*mean and n*(var+mean^2) in float64 keeps
        # the combination across batches exact enough.
        var, mean = torch.var_mean(x.float(), dim=dims, correction=0)
        self.count += n
        self.sum += n * mean.to(self.sum.dtype)
        self.sum_sq += n * (var.to(self.sum.dtype) + mean.to(self.sum.dtype).square())


@torch.no_grad()
def update_bn_stats(
    model: nn.Module,
    data_loader: Iterable[Any],
    num_iters: int = 200,
    progress: str | None = None,
    *,
    sync: bool | None = None,
) -> None:
    """fvcore ``update_bn_stats``: set every training-mode BN layer's running stats to the true statistics.

    Runs ``model(batch)`` for the first ``num_iters`` batches of ``data_loader`` under ``no_grad`` and sets
    each BN layer's ``running_mean``/``running_var`` to the mean and variance of **all** the values its
    channels received over those batches — each batch weighted by its size (batch and spatial positions),
    the variance over the whole population (divided by the total count, as fvcore). This is the dataset's
    statistic for the current weights, not a moving average.

    The statistics are measured on each BN layer's input while its momentum is set to 0, so the running
    buffers are not touched until the end (fvcore sets momentum to 1 and reads the buffers back instead: the
    same numbers for plain BatchNorm; measuring the input is also exact for SyncBatchNorm). Momentum and
    ``num_batches_tracked`` are restored afterwards, and module modes are never changed: the caller puts
    the layers to update in training mode. Layers that received no input keep their statistics.

    Under DDP (``sync``, by default whenever a process group of world size > 1 exists) the counts and sums
    are all-reduced, so every rank ends with identical statistics over all ranks' data (fvcore leaves each
    rank with its own, detectron2 issue #5398). It is then a collective: **every rank must call it**, with
    the same ``num_iters``.

    Args:
        model: the model; its BN layers in training mode (see :func:`get_bn_modules`) are updated.
        data_loader: an iterable of model inputs; at least ``num_iters`` batches are taken from it.
        num_iters: the number of batches.
        progress: None, or ``"tqdm"`` to show a tqdm progress bar.
        sync: all-reduce across ranks (None: when a process group of world size > 1 exists).

    Raises:
        TypeError: when ``model`` is not an ``nn.Module`` or a BN layer gets a non-tensor input.
        ValueError: when ``num_iters`` is not an int >= 1 or ``progress`` is not None or "tqdm".
        RuntimeError: when the loader yields fewer than ``num_iters`` batches (on every rank under DDP), or a
            BN layer runs twice in one forward (reused layers are not supported).

    Example::

        model.train()
        update_bn_stats(model, itertools.islice(train_loader, 200), num_iters=200)
    """
    check_int("num_iters", num_iters, minimum=1)
    if progress not in (None, "tqdm"):
        raise ValueError(f"progress must be None or 'tqdm', got {progress!r}")
    layers = cast(list[_BatchNorm], get_bn_modules(model))
    if not layers:
        return
    if sync is None:
        sync = comm.get_world_size() > 1
    logger.info(f"Computing precise BN statistics for {len(layers)} BN layers ...")

    moments: dict[nn.Module, _Moments] = {bn: _Moments(bn.running_mean) for bn in layers}  # type: ignore[arg-type]
    names = {m: name for name, m in model.named_modules()}
    seen: set[nn.Module] = set()

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        if module in seen:
            raise RuntimeError(
                f"BN layer {names[module]!r} ran twice in one forward: update_bn_stats does not support reused "
                "BN layers"
            )
        seen.add(module)
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"BN layer {names[module]!r} got a {type(x).__qualname__} input, expected a tensor")
        moments[module].add(x)

    saved = [(bn.momentum, _clone(bn.num_batches_tracked)) for bn in layers]
    handles = [bn.register_forward_pre_hook(record) for bn in layers]
    try:
        for bn in layers:
            bn.momentum = 0.0  # batch statistics are still used to normalize; the running buffers stay put
        done = 0
        for batch in _maybe_tqdm(itertools.islice(data_loader, num_iters), num_iters, progress):
            seen.clear()
            model(batch)
            done += 1
        _finish(layers, moments, names, done, num_iters, sync)
    finally:
        for handle in handles:
            handle.remove()
        for bn, (momentum, tracked) in zip(layers, saved, strict=True):
            bn.momentum = momentum
            if tracked is not None:
                bn.num_batches_tracked.copy_(tracked)  # type: ignore[union-attr]


def _finish(
    layers: list[_BatchNorm],
    moments: dict[nn.Module, _Moments],
    names: dict[nn.Module, str],
    done: int,
    num_iters: int,
    sync: bool,
) -> None:
    """Check the batch count, all-reduce (one collective), and write the statistics into the buffers."""
    parts = [moments[bn] for bn in layers]
    first = parts[0].count
    chunks = [torch.cat([p.count, p.sum, p.sum_sq]).to(first.device) for p in parts]
    packed = torch.cat([torch.tensor([done], dtype=first.dtype, device=first.device), *chunks])
    world = comm.get_world_size() if sync else 1
    if sync:
        dist.all_reduce(packed)  # sums: batches done, and per layer count, sum, sum of squares
    if done < num_iters:
        raise RuntimeError(
            f"update_bn_stats is meant to run for num_iters={num_iters} batches, but the data loader stopped "
            f"after {done} batches"
        )
    if int(packed[0].item()) != num_iters * world:
        raise RuntimeError(
            f"update_bn_stats is meant to run for num_iters={num_iters} batches, but the data loader of another "
            "rank stopped early"
        )
    unused = []
    for bn, chunk in zip(layers, packed[1:].split([c.numel() for c in chunks]), strict=True):
        channels = (chunk.numel() - 1) // 2
        count, total, total_sq = chunk[0], chunk[1 : 1 + channels], chunk[1 + channels :]
        if count.item() == 0:
            unused.append(names[bn])
            continue
        mean = total / count
        var = (total_sq / count - mean.square()).clamp_(min=0)
        bn.running_mean.copy_(mean.view_as(bn.running_mean))  # type: ignore[union-attr]
        bn.running_var.copy_(var.view_as(bn.running_var))  # type: ignore[union-attr]
    if unused:
        logger.warning(f"update_bn_stats: BN layers {unused} received no input; their statistics are unchanged")


def _clone(t: Any) -> torch.Tensor | None:
    return t.clone() if isinstance(t, torch.Tensor) else None


def _maybe_tqdm(batches: Iterator[Any], total: int, progress: str | None) -> Iterator[Any]:
    if progress != "tqdm":
        return batches
    import tqdm

    return iter(tqdm.tqdm(batches, total=total))

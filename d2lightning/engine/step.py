"""The pieces of one training iteration that ``SimpleTrainer`` and ``AMPTrainer`` share.

``forward_backward`` is detectron2's ``run_step`` up to the optimizer step — fetch (timed as ``data_time``),
forward, ``zero_grad`` (after the forward unless ``zero_grad_before_forward``), backward, ``after_backward`` — for
one batch or, with gradient accumulation, for ``N`` micro-batches. Inside a Lightning run the backward and the
optimizer step go through Lightning (precision plugin, DDP); outside one they are plain torch calls.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.parallel import DistributedDataParallel

from d2lightning.engine.adapter import current_run

if TYPE_CHECKING:
    from d2lightning.engine.train_loop import SimpleTrainer, TrainerBase

__all__ = ["backward", "forward_backward", "optimizer_step", "sum_losses"]


def forward_backward(
    trainer: SimpleTrainer,
    forward_context: Callable[[], Any],
    scale: Callable[[torch.Tensor], torch.Tensor] | None,
) -> tuple[Mapping[str, torch.Tensor], float]:
    """Fetch, forward and backward ``trainer.accumulate_grad_batches`` batches (no optimizer step).

    Args:
        trainer: the trainer whose model, data and optimizer are used.
        forward_context: a context for the forward (autocast for AMP).
        scale: applied to the loss before the backward (the AMP grad scaler), or None.

    Returns:
        The loss dict (averaged over micro-batches with accumulation) and the fetch time (summed).
    """
    n = trainer.accumulate_grad_batches
    data_time = 0.0
    means: dict[str, torch.Tensor] = {}
    loss_dict: Mapping[str, torch.Tensor] = means
    if trainer.zero_grad_before_forward:
        trainer.optimizer.zero_grad()
    for k in range(n):
        start = time.perf_counter()
        data = trainer._next_batch()
        data_time += time.perf_counter() - start
        # under DDP, only the last micro-batch's backward all-reduces the gradients
        with _grad_sync_skipped(trainer.model) if k < n - 1 else contextlib.nullcontext():
            with forward_context():
                loss_dict, losses = sum_losses(trainer.model(data), trainer.iter)
            if k == 0 and not trainer.zero_grad_before_forward:
                trainer.optimizer.zero_grad()
            if n > 1:
                losses = losses / n
            backward(trainer, scale(losses) if scale is not None else losses)
        if n > 1:
            for name, value in loss_dict.items():
                share = value.detach() / n
                means[name] = means[name] + share if name in means else share
    return (means if n > 1 else loss_dict), data_time


def sum_losses(output: Any, cur_iter: int) -> tuple[Mapping[str, torch.Tensor], torch.Tensor]:
    """detectron2's loss contract: one scalar tensor, or a dict of scalar tensors that are summed.

    Raises:
        TypeError: naming the iteration and what the model returned, for anything else.
    """
    if isinstance(output, torch.Tensor):
        if output.numel() != 1:
            raise TypeError(
                f"in training mode the model must return a scalar loss or a dict of scalar losses; at iteration "
                f"{cur_iter} it returned a tensor of shape {tuple(output.shape)}"
            )
        return {"total_loss": output}, output
    if not isinstance(output, Mapping) or not output:
        raise TypeError(
            f"in training mode the model must return a dict of scalar loss tensors (or one scalar tensor); at "
            f"iteration {cur_iter} it returned {type(output).__qualname__}"
            + (" (empty)" if isinstance(output, Mapping) else "")
        )
    for name, value in output.items():
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__qualname__
            raise TypeError(
                f"in training mode the model must return a dict of scalar loss tensors; at iteration {cur_iter} "
                f"loss {name!r} is {got}"
            )
    return output, sum(output.values())  # type: ignore[return-value]


def backward(trainer: TrainerBase, loss: torch.Tensor) -> None:
    """``loss.backward()`` then the hooks' ``after_backward`` (through Lightning inside a run)."""
    run = current_run()
    if run is None:
        loss.backward()
        trainer.after_backward()
    else:
        run.backward(loss)


def optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()`` (through Lightning's strategy and precision plugin inside a run)."""
    run = current_run()
    if run is None:
        optimizer.step()
    else:
        run.optimizer_step(optimizer)


def _grad_sync_skipped(model: torch.nn.Module) -> Any:
    """A context in which backwards accumulate gradients locally, without DDP's all-reduce.

    ``no_sync`` of a model wrapped by ``create_ddp_model``, else of the Lightning strategy's DDP wrapper
    (``block_backward_sync``); nothing to skip otherwise (one process, or a strategy without it).
    """
    if isinstance(model, DistributedDataParallel):
        return model.no_sync()
    run = current_run()
    block = getattr(run.pl_trainer.strategy, "block_backward_sync", None) if run is not None else None
    return block() if block is not None else contextlib.nullcontext()

"""The pieces of one training iteration that ``SimpleTrainer`` and ``AMPTrainer`` share.

``forward_backward`` is detectron2's ``run_step`` up to the optimizer step — fetch (timed as ``data_time``),
forward, ``zero_grad`` (after the forward unless ``zero_grad_before_forward``), backward, ``after_backward`` — for
one batch or, with gradient accumulation, for ``N`` micro-batches. The backward and DDP's ``no_sync`` go through the
trainer's ``step_backend`` (:mod:`d2lightning.engine.lightning.backend`): plain torch outside a fit, the Lightning
Trainer's strategy and precision plugin inside one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from d2lightning.engine.train_loop import SimpleTrainer

__all__ = ["forward_backward", "sum_losses"]


def forward_backward(
    trainer: SimpleTrainer,
    forward_context: Callable[[], Any],
    scale: Callable[[torch.Tensor], torch.Tensor] | None,
) -> tuple[Mapping[str, torch.Tensor], float]:
    """Fetch, forward and backward ``trainer.accumulate_grad_batches`` batches (no optimizer step).

    With Lightning's data, an epoch that ends in the middle of an accumulation ends it early: the micro-batches
    fetched so far make the iteration (as Lightning's own accumulation does at the end of an epoch).

    Args:
        trainer: the trainer whose model, data and optimizer are used.
        forward_context: a context for the forward (autocast for AMP).
        scale: applied to the loss before the backward (the AMP grad scaler), or None.

    Returns:
        The loss dict (averaged over micro-batches with accumulation) and the fetch time (summed).
    """
    n = trainer.accumulate_grad_batches
    if n == 1:
        return _one_batch(trainer, forward_context, scale)
    data_time = 0.0
    means: dict[str, torch.Tensor] = {}
    if trainer.zero_grad_before_forward:
        trainer.optimizer.zero_grad()
    for k in range(n):
        try:
            data, seconds = trainer._fetch()
        except StopIteration:  # Lightning's epoch ended: the micro-batches so far make the iteration
            break
        data_time += seconds
        # under DDP, only the last micro-batch's backward all-reduces the gradients
        with trainer.step_backend.no_sync(trainer.model) if k < n - 1 else _NO_CONTEXT:
            with forward_context():
                loss_dict, losses = sum_losses(trainer.model(data), trainer.iter)
            if k == 0 and not trainer.zero_grad_before_forward:
                trainer.optimizer.zero_grad()
            trainer.step_backend.backward(scale(losses / n) if scale is not None else losses / n, trainer._hooks)
        for name, value in loss_dict.items():
            share = value.detach() / n
            means[name] = means[name] + share if name in means else share
    return means, data_time


def _one_batch(
    trainer: SimpleTrainer,
    forward_context: Callable[[], Any],
    scale: Callable[[torch.Tensor], torch.Tensor] | None,
) -> tuple[Mapping[str, torch.Tensor], float]:
    """detectron2's step exactly: fetch, forward, zero_grad, backward."""
    data, data_time = trainer._fetch()
    if trainer.zero_grad_before_forward:
        trainer.optimizer.zero_grad()
    with forward_context():
        loss_dict, losses = sum_losses(trainer.model(data), trainer.iter)
    if not trainer.zero_grad_before_forward:
        trainer.optimizer.zero_grad()
    trainer.step_backend.backward(scale(losses) if scale is not None else losses, trainer._hooks)
    return loss_dict, data_time


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


_NO_CONTEXT = contextlib.nullcontext()  # one shared, reusable null context

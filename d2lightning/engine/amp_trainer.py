"""detectron2's ``AMPTrainer``: ``SimpleTrainer`` with autocast and a grad scaler (also on CPU, bfloat16)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from d2lightning.engine.simple_trainer import SimpleTrainer
from d2lightning.engine.step import forward_backward
from d2lightning.utils.events import get_event_storage

__all__ = ["AMPTrainer"]


class AMPTrainer(SimpleTrainer):
    """Like :class:`SimpleTrainer`, with automatic mixed precision: autocast forward, scaled backward.

    Runs on CUDA and, unlike detectron2's, on CPU too (``precision=torch.bfloat16`` there). As in detectron2,
    metrics are written synchronously whatever ``async_write_metrics`` says, and the scaler's state is part
    of :meth:`state_dict` (``"grad_scaler"``), required when loading.

    Args:
        model, data_loader, optimizer, gather_metric_period, zero_grad_before_forward, async_write_metrics:
            as :class:`SimpleTrainer`.
        grad_scaler: a ``torch.amp.GradScaler``; by default one for the model's device.
        precision: the autocast dtype, ``torch.float16`` or ``torch.bfloat16``.
        log_grad_scaler: put the scale into the storage as ``[metric]grad_scaler`` every iteration.
        accumulate_grad_batches: micro-batches per iteration, as :class:`SimpleTrainer` (keyword-only); the
            scaler steps and updates once per iteration.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        data_loader: Iterable[Any] | None,
        optimizer: torch.optim.Optimizer,
        gather_metric_period: int = 1,
        zero_grad_before_forward: bool = False,
        grad_scaler: Any = None,
        precision: torch.dtype = torch.float16,
        log_grad_scaler: bool = False,
        async_write_metrics: bool = False,
        *,
        accumulate_grad_batches: int = 1,
    ) -> None:
        if precision not in (torch.float16, torch.bfloat16):
            raise ValueError(f"precision must be torch.float16 or torch.bfloat16, got {precision!r}")
        if isinstance(model, torch.nn.DataParallel):
            raise ValueError("AMPTrainer does not support single-process multi-device training (DataParallel)")
        super().__init__(
            model,
            data_loader,
            optimizer,
            gather_metric_period,
            zero_grad_before_forward,
            accumulate_grad_batches=accumulate_grad_batches,
        )
        param = next(model.parameters(), None)
        self._device_type = param.device.type if param is not None else "cpu"
        self.grad_scaler = grad_scaler if grad_scaler is not None else _default_grad_scaler(self._device_type)
        self.precision = precision
        self.log_grad_scaler = log_grad_scaler

    def run_step(self) -> None:
        """One iteration under autocast, with the backward and the step through the grad scaler."""
        if not self.model.training:
            raise AssertionError("[AMPTrainer] model was changed to eval mode!")
        loss_dict, data_time = forward_backward(self, self._autocast, self.grad_scaler.scale)
        if self.log_grad_scaler:
            get_event_storage().put_scalar("[metric]grad_scaler", self.grad_scaler.get_scale())
        self._write_metrics(loss_dict, data_time)
        # grad_scaler.step and update, through the step backend: in a fit, Lightning's on_before_optimizer_step (and
        # the Trainer's gradient clipping) see the unscaled gradients
        self.step_backend.optimizer_step(self.optimizer, self.grad_scaler)

    def check_trainer_options(self, pl_trainer: Any) -> None:
        """Refuse a Lightning precision other than full float32: this trainer runs its own mixed precision.

        Raises:
            ValueError: naming the Trainer's precision and what to do instead.
        """
        precision = str(pl_trainer.precision)
        if precision not in ("32-true", "32"):
            raise ValueError(
                "AMPTrainer runs its own mixed precision (autocast and a grad scaler), and the Trainer was created "
                f"with precision={precision!r}: leave the Trainer at precision='32-true', or use a SimpleTrainer with "
                f"Trainer(precision={precision!r})"
            )

    def _autocast(self) -> Any:
        return torch.autocast(device_type=self._device_type, dtype=self.precision)

    def state_dict(self) -> dict[str, Any]:
        ret = super().state_dict()
        ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "grad_scaler" not in state_dict:
            raise KeyError("AMPTrainer.load_state_dict: the state has no 'grad_scaler' (saved without AMP?)")
        self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def _default_grad_scaler(device_type: str) -> Any:
    try:
        return torch.amp.GradScaler(device_type)
    except (AttributeError, TypeError, RuntimeError):  # torch < 2.3 has no CPU scaler
        return torch.cuda.amp.GradScaler(enabled=device_type == "cuda")

"""Tests for detectron2-style per-parameter gradient clipping (d2lightning.solver.gradient_clipping)."""

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from d2lightning.solver import (
    ConstantParamScheduler,
    GradientClipType,
    LRMultiplier,
    build_optimizer,
    maybe_add_gradient_clipping,
)
from tests.helpers.solver import solver_cfg


def clip_cfg(enabled=True, clip_type="value", clip_value=1.0, norm_type=2.0, **solver):
    """A SOLVER node with detectron2's keys: plain SGD (lr 0.1, no momentum/decay) and the given clipping."""
    clipping = {"ENABLED": enabled, "CLIP_TYPE": clip_type, "CLIP_VALUE": clip_value, "NORM_TYPE": norm_type}
    return solver_cfg(**{"BASE_LR": 0.1, "MOMENTUM": 0.0, "WEIGHT_DECAY": 0.0, "CLIP_GRADIENTS": clipping, **solver})


class TwoParams(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(4))
        self.b = nn.Parameter(torch.zeros(1))


def step_with_grads(cfg, grad_a, grad_b):
    """Build the optimizer from cfg, set the gradients, step once; return the new parameter values."""
    model = TwoParams()
    optimizer = build_optimizer(cfg, model)
    model.a.grad = torch.tensor(grad_a)
    model.b.grad = torch.tensor(grad_b)
    optimizer.step()
    return model.a.detach().tolist(), model.b.detach().tolist()


def test_without_clipping_the_full_gradient_is_applied():
    a, b = step_with_grads(clip_cfg(enabled=False), [1000.0, -1000.0, 0.5, 0.0], [3.0])
    assert a == pytest.approx([-100.0, 100.0, -0.05, 0.0])
    assert b == pytest.approx([-0.3])


def test_clip_by_value():
    a, b = step_with_grads(clip_cfg(clip_value=1.0), [1000.0, -1000.0, 0.5, 0.0], [3.0])
    assert a == pytest.approx([-0.1, 0.1, -0.05, 0.0])
    assert b == pytest.approx([-0.1])


def test_clip_by_norm_is_per_parameter():
    # |grad a| = 6 -> scaled to norm 1; |grad b| = 0.5 stays (global clipping would scale both).
    a, b = step_with_grads(clip_cfg(clip_type="norm"), [3.0, 3.0, 3.0, 3.0], [0.5])
    assert a == pytest.approx([-0.05] * 4, rel=1e-5)
    assert b == pytest.approx([-0.05])


def test_clip_by_inf_norm():
    a, _ = step_with_grads(clip_cfg(clip_type="norm", norm_type=float("inf")), [3.0, -4.0, 0.0, 0.0], [0.0])
    assert a == pytest.approx([-0.075, 0.1, 0.0, 0.0], rel=1e-5)


def test_wrapped_class_name_and_type():
    optimizer = build_optimizer(clip_cfg(), TwoParams())
    assert type(optimizer).__name__ == "SGDWithGradientClip"
    assert isinstance(optimizer, torch.optim.SGD)
    adamw = build_optimizer(clip_cfg(OPTIMIZER="adamw"), TwoParams())
    assert type(adamw).__name__ == "AdamWWithGradientClip"


def test_class_argument_returns_subclass_and_disabled_returns_input():
    cls = maybe_add_gradient_clipping(clip_cfg(), torch.optim.SGD)
    assert cls.__name__ == "SGDWithGradientClip"
    assert issubclass(cls, torch.optim.SGD)
    assert maybe_add_gradient_clipping(clip_cfg(enabled=False), torch.optim.SGD) is torch.optim.SGD
    optimizer = torch.optim.SGD(TwoParams().parameters(), lr=0.1)
    assert maybe_add_gradient_clipping(clip_cfg(enabled=False), optimizer) is optimizer


def test_class_path_clips_and_runs_step_hooks_once():
    model = TwoParams()
    cls = maybe_add_gradient_clipping(clip_cfg(), torch.optim.SGD)
    optimizer = cls(model.parameters(), lr=0.1)
    calls = []
    optimizer.register_step_pre_hook(lambda *args: calls.append("pre"))
    optimizer.register_step_post_hook(lambda *args: calls.append("post"))
    model.a.grad = torch.full((4,), 50.0)
    model.b.grad = torch.tensor([-50.0])
    optimizer.step()
    assert calls == ["pre", "post"]
    assert model.a.detach().tolist() == pytest.approx([-0.1] * 4)
    assert model.b.detach().tolist() == pytest.approx([0.1])


def test_works_with_lr_scheduler_created_afterwards():
    model = TwoParams()
    optimizer = build_optimizer(clip_cfg(), model)
    LRMultiplier(optimizer, ConstantParamScheduler(0.5), max_iter=10)
    model.a.grad = torch.full((4,), 50.0)
    model.b.grad = torch.tensor([0.0])
    optimizer.step()
    assert model.a.detach().tolist() == pytest.approx([-0.05] * 4)


def test_lr_scheduler_created_before_clipping_is_refused():
    optimizer = torch.optim.SGD(TwoParams().parameters(), lr=0.1)
    LRMultiplier(optimizer, ConstantParamScheduler(1.0), max_iter=10)
    with pytest.raises(ValueError, match="add gradient clipping before creating its LR scheduler"):
        maybe_add_gradient_clipping(clip_cfg(), optimizer)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip_type": "full_model"}, r"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be one of \['value', 'norm'\]"),
        ({"clip_value": 0.0}, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be a finite number > 0"),
        ({"clip_type": "norm", "norm_type": -2.0}, "SOLVER.CLIP_GRADIENTS.NORM_TYPE must be a number > 0"),
    ],
)
def test_bad_clip_config_names_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_optimizer(clip_cfg(**kwargs), TwoParams())


def test_bad_optimizer_argument():
    with pytest.raises(TypeError, match=r"optimizer must be a torch\.optim\.Optimizer subclass or instance"):
        maybe_add_gradient_clipping(clip_cfg(), "SGD")


def test_gradient_clip_type_values():
    assert [t.value for t in GradientClipType] == ["value", "norm"]


class ManualStepModule(pl.LightningModule):
    """d2lightning's step shape: forward, zero_grad, backward, then optimizer.step() with no closure work."""

    def __init__(self, cfg):
        super().__init__()
        self.automatic_optimization = False
        self.cfg = cfg
        self.w = nn.Parameter(torch.zeros(3))

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        loss = (batch * self.w).sum()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()

    def configure_optimizers(self):
        return build_optimizer(self.cfg, self)

    def train_dataloader(self):
        return torch.utils.data.DataLoader([torch.tensor([1000.0, -1000.0, 0.5])], batch_size=None)


def test_clipping_applies_under_lightning_manual_optimization():
    module = ManualStepModule(clip_cfg(clip_value=1.0))
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module)
    assert type(trainer.optimizers[0]).__name__ == "SGDWithGradientClip"
    assert module.w.detach().tolist() == pytest.approx([-0.1, 0.1, -0.05])

"""Gradient accumulation: ``SimpleTrainer`` / ``AMPTrainer(accumulate_grad_batches=N)``.

One iteration = N micro-batches (N fetches, forwards and backwards of ``loss / N``) and one optimizer step;
iterations and hook periods count optimizer steps.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from d2lightning.engine import AMPTrainer, D2LightningModule, SimpleTrainer, hooks
from d2lightning.engine import simple_trainer as simple_trainer_module
from tests.helpers.training import Recorder, lightning_trainer


class Regressor(nn.Module):
    """A linear model without BatchNorm; the loss is a mean over the batch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3, 1)

    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.linear(batch)
        return {"loss_sq": out.pow(2).mean(), "loss_abs": out.abs().mean()}


class CountingLoader:
    """Yields fixed (4, 3) batches endlessly and counts the fetches."""

    def __init__(self, batches: list[torch.Tensor]) -> None:
        self.batches = batches
        self.fetches = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        for b in itertools.cycle(self.batches):
            self.fetches += 1
            yield b


def batches(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, generator=g) for _ in range(n)]


def count_steps(optimizer: torch.optim.Optimizer) -> list[int]:
    steps: list[int] = []
    optimizer.register_step_post_hook(lambda *_: steps.append(1))
    return steps


def make(mode: str, n: int, loader: Any, model: nn.Module | None = None, **kw: Any) -> tuple[Any, nn.Module, Any]:
    model = model or Regressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    cls = AMPTrainer if mode == "amp" else SimpleTrainer
    if mode == "amp":
        kw["precision"] = torch.bfloat16
    trainer = cls(model, loader, optimizer, accumulate_grad_batches=n, **kw)
    return trainer, model, optimizer


def fit(mode: str, trainer: Any, max_iter: int) -> None:
    if mode == "lightning":
        lightning_trainer(max_iter, list(trainer._hooks)).fit(D2LightningModule(trainer=trainer))
    else:
        trainer.train(0, max_iter)


@pytest.mark.parametrize("mode", ["simple", "lightning", "amp"])
def test_one_optimizer_step_per_n_fetches(mode: str) -> None:
    loader = CountingLoader(batches(6))
    trainer, _, optimizer = make(mode, 3, loader)
    steps = count_steps(optimizer)
    fit(mode, trainer, 4)
    assert (len(steps), loader.fetches, trainer.iter) == (4, 12, 4)


@pytest.mark.parametrize("mode", ["simple", "lightning"])
def test_hooks_count_optimizer_steps(mode: str) -> None:
    calls: list[tuple[str, str, int]] = []
    evaluated_at: list[int] = []
    trainer, _, _ = make(mode, 2, CountingLoader(batches(4)))
    trainer.register_hooks([Recorder("h", calls), hooks.EvalHook(2, lambda: evaluated_at.append(trainer.iter))])
    fit(mode, trainer, 3)
    # after_backward runs once per micro-batch backward (as Lightning's on_after_backward), with the same iter
    assert calls == [
        ("h", "before_train", 0),
        ("h", "before_step", 0), ("h", "after_backward", 0), ("h", "after_backward", 0), ("h", "after_step", 0),
        ("h", "before_step", 1), ("h", "after_backward", 1), ("h", "after_backward", 1), ("h", "after_step", 1),
        ("h", "before_step", 2), ("h", "after_backward", 2), ("h", "after_backward", 2), ("h", "after_step", 2),
        ("h", "after_train", 3),
    ]  # fmt: skip
    assert evaluated_at == [1, 3]  # after iteration 1 (period 2) and after training
    assert trainer.storage.history("total_loss").values()[-1][1] == 2


@pytest.mark.parametrize("zero_grad_before_forward", [False, True])
@pytest.mark.parametrize("mode", ["simple", "lightning"])
def test_equals_one_step_on_the_concatenated_batch(mode: str, zero_grad_before_forward: bool) -> None:
    b = batches(2)
    accumulated, model_a, _ = make(mode, 2, CountingLoader(b), zero_grad_before_forward=zero_grad_before_forward)
    fit(mode, accumulated, 1)
    single, model_s, _ = make(mode, 1, CountingLoader([torch.cat(b)]))
    fit(mode, single, 1)
    # gradients are left in .grad after the step: equal up to float rounding, and so are the new weights
    for pa, ps in zip(model_a.parameters(), model_s.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, ps.grad, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(pa, ps, rtol=1e-6, atol=1e-7)
    # the written losses are the means over the micro-batches = the losses of the concatenated batch
    for name in ("total_loss", "loss_sq", "loss_abs"):
        assert accumulated.storage.history(name).latest() == pytest.approx(single.storage.history(name).latest())


def test_gradients_are_zeroed_once_per_iteration() -> None:
    """Without zeroing between iterations the second step would see twice the gradient."""
    b = batches(4)
    accumulated, model_a, _ = make("simple", 2, CountingLoader(b))
    accumulated.train(0, 2)
    single, model_s, _ = make("simple", 1, CountingLoader([torch.cat(b[:2]), torch.cat(b[2:])]))
    single.train(0, 2)
    for pa, ps in zip(model_a.parameters(), model_s.parameters(), strict=True):
        torch.testing.assert_close(pa, ps, rtol=1e-6, atol=1e-7)


class _FakeTime:
    """A clock that advances by 1 s at every reading (only train_loop's readings)."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


def test_data_time_sums_the_fetches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simple_trainer_module, "time", _FakeTime())
    trainer, _, _ = make("simple", 3, CountingLoader(batches(3)))
    trainer.train(0, 2)
    # each fetch is timed as one tick of the fake clock: 3 fetches per iteration
    assert [v for v, _ in trainer.storage.history("data_time").values()] == [3.0, 3.0]


def test_default_is_detectron2s_step() -> None:
    trainer, _, _ = make("simple", 1, CountingLoader(batches(1)))
    assert trainer.accumulate_grad_batches == 1
    assert SimpleTrainer(Regressor(), [], torch.optim.SGD(Regressor().parameters(), 0.1)).accumulate_grad_batches == 1


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_rejects_bad_values(bad: Any) -> None:
    model = Regressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(
        ValueError, match=r"accumulate_grad_batches \(micro-batches per iteration\) must be an int >= 1, got"
    ):
        SimpleTrainer(model, [], optimizer, accumulate_grad_batches=bad)
    trainer = SimpleTrainer(model, [], optimizer)
    with pytest.raises(ValueError, match=r"accumulate_grad_batches .* must be an int >= 1"):
        trainer.accumulate_grad_batches = bad
    assert trainer.accumulate_grad_batches == 1


def test_settable_attribute_on_the_module_trainer() -> None:
    loader = CountingLoader(batches(2))
    model = Regressor()
    module = D2LightningModule(model, loader, torch.optim.SGD(model.parameters(), lr=0.1))
    module.d2_trainer.accumulate_grad_batches = 2  # type: ignore[attr-defined]
    lightning_trainer(3).fit(module)
    assert loader.fetches == 6

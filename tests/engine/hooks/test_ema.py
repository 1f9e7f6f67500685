"""The ``EMA`` hook: the average after every optimizer step, evaluated by EvalHook, checkpointed, resumed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from d2lightning.checkpoint import DetectionCheckpointer
from d2lightning.engine import SimpleTrainer, hooks
from tests.helpers.checkpoint import MODES, fit, loader_from
from tests.helpers.training import SimpleModel

DECAY = 0.5


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def by_hand(raw: list[dict[str, torch.Tensor]], decay: float = DECAY) -> list[dict[str, torch.Tensor]]:
    """ema_0 = w_0, ema_k = decay * ema_{k-1} + (1 - decay) * w_k, for the weights after each step."""
    out = [raw[0]]
    for w in raw[1:]:
        out.append({k: decay * out[-1][k] + (1 - decay) * w[k] for k in w})
    return out


def build(start: int = 0) -> tuple[SimpleTrainer, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = SimpleModel()
    opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    return SimpleTrainer(model, loader_from(start), opt), opt


class RawWeights(hooks.HookBase):
    """Records the model's (raw) weights after every step."""

    def __init__(self) -> None:
        self.seen: list[dict[str, torch.Tensor]] = []

    def after_step(self) -> None:
        self.seen.append(weights(self.trainer.model))


@pytest.mark.parametrize("ema_first", [True, False], ids=["ema-before-evalhook", "ema-after-evalhook"])
@pytest.mark.parametrize("mode", MODES)
def test_evalhook_evaluates_the_average(mode: str, ema_first: bool) -> None:
    trainer, _ = build()
    evaluated: list[dict[str, torch.Tensor]] = []
    ema = hooks.EMA(DECAY)
    eval_hook = hooks.EvalHook(1, lambda: evaluated.append(weights(trainer.model)))
    raw = RawWeights()
    fit(mode, trainer, [raw, ema, eval_hook] if ema_first else [raw, eval_hook, ema], 4)
    expected = by_hand(raw.seen)
    assert len(evaluated) == 4  # after iterations 0, 1, 2 and the final one
    for got, want in zip(evaluated, expected, strict=True):
        for k in want:
            torch.testing.assert_close(got[k], want[k])
    # from the second step on the average differs from the raw weights; the model keeps the raw ones
    assert not torch.allclose(evaluated[-1]["mod.weight"], raw.seen[-1]["mod.weight"])
    for k, v in weights(trainer.model).items():
        assert torch.equal(v, raw.seen[-1][k])
    assert ema.num_updates == 4
    for k, v in ema.averaged_model.state_dict().items():  # type: ignore[union-attr]
        torch.testing.assert_close(v, expected[-1][k])


def test_swapped_yields_the_model_with_the_average() -> None:
    trainer, _ = build()
    ema = hooks.EMA(DECAY)
    raw = RawWeights()
    fit("simple", trainer, [raw, ema], 3)
    with ema.swapped() as model:
        assert model is trainer.model
        torch.testing.assert_close(model.mod.weight, by_hand(raw.seen)[-1]["mod.weight"])
    assert torch.equal(trainer.model.mod.weight, raw.seen[-1]["mod.weight"])


def test_evaluate_false_leaves_evalhook_on_the_raw_weights() -> None:
    trainer, _ = build()
    evaluated: list[dict[str, torch.Tensor]] = []
    raw = RawWeights()
    fit("simple", trainer, [raw, hooks.EMA(DECAY, evaluate=False), hooks.EvalHook(0, lambda: evaluated.append(weights(trainer.model)))], 3)  # fmt: skip
    assert torch.equal(evaluated[0]["mod.weight"], raw.seen[-1]["mod.weight"])


def checkpointed(tmp_path: Path, trainer: SimpleTrainer, opt: Any, period: int) -> list[Any]:
    ckpt = DetectionCheckpointer(trainer.model, str(tmp_path), optimizer=opt, trainer=trainer)
    return [hooks.PeriodicCheckpointer(ckpt, period)]


@pytest.mark.parametrize("mode", MODES)
def test_saved_in_the_checkpoint(tmp_path: Path, mode: str) -> None:
    trainer, opt = build()
    ema = hooks.EMA(DECAY)
    raw = RawWeights()
    # the checkpointer runs before the EMA hook: the step hook has already averaged iteration 2
    fit(mode, trainer, [raw, *checkpointed(tmp_path, trainer, opt, 3), ema], 3)
    saved = torch.load(tmp_path / "model_0000002.pth", weights_only=True)
    state = saved["trainer"]["hooks"]["EMA"]
    assert (state["decay"], state["num_updates"]) == (DECAY, 3)
    for k, v in by_hand(raw.seen)[-1].items():
        torch.testing.assert_close(state["model"][k], v)
    if mode == "lightning":  # also in Lightning's callback states
        assert saved["callbacks"]["EMA"]["num_updates"] == 3


@pytest.mark.parametrize("resume", ["resume_or_load", "fit_ckpt_path"])
def test_resumed_run_continues_the_average(tmp_path: Path, resume: str) -> None:
    reference, opt = build()
    ema_ref = hooks.EMA(DECAY)
    fit("simple", reference, [*checkpointed(tmp_path / "ref", reference, opt, 3), ema_ref], 6)

    resumed, opt = build(start=3)
    ema = hooks.EMA(DECAY)
    hooks_res = [*checkpointed(tmp_path / "ref", resumed, opt, 3), ema]
    if resume == "resume_or_load":
        resumed.register_hooks(hooks_res)
        hooks_res[0].checkpointer.load(str(tmp_path / "ref" / "model_0000002.pth"))
        resumed.train(3, 6)
    else:
        fit("lightning", resumed, hooks_res, 6, ckpt_path=tmp_path / "ref" / "model_0000002.pth")
    assert ema.num_updates == 6
    got, want = ema.averaged_model.state_dict(), ema_ref.averaged_model.state_dict()  # type: ignore[union-attr]
    assert list(got) == list(want)
    for k in got:
        torch.testing.assert_close(got[k], want[k], msg=k)


@pytest.mark.parametrize("decay", [-0.1, 1.5, "0.9", True])
def test_rejects_bad_decay(decay: Any) -> None:
    with pytest.raises(ValueError, match=r"EMA decay must be a number in \[0, 1\], got"):
        hooks.EMA(decay)


def test_rejects_a_non_module_model() -> None:
    with pytest.raises(TypeError, match=r"EMA model must be a torch.nn.Module, got dict"):
        hooks.EMA(0.9, model={})  # type: ignore[arg-type]

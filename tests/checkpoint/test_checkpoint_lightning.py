"""Lightning's full state in detectron2-layout checkpoints: one file, two ways to resume, exactly."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import FSDPStrategy, SingleDeviceStrategy

from d2lightning.checkpoint import Checkpointer, DetectionCheckpointer
from d2lightning.checkpoint.lightning_state import MARKER_KEY
from d2lightning.engine import AMPTrainer, D2LightningModule, SimpleTrainer, hooks
from d2lightning.engine.lightning.training_state import _holds_full_state
from tests.helpers.checkpoint import MODES, files, fit, loader_from
from tests.helpers.training import SimpleModel, lightning_trainer

MAX_ITER = 12


def build(out: Path, start: int, trainer_cls: type = SimpleTrainer, **kw: Any) -> tuple[Any, list[Any]]:
    """A seeded model, SGD with momentum, a StepLR and a checkpoint every 5 iterations."""
    torch.manual_seed(0)
    model = SimpleModel()
    opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    trainer = trainer_cls(model, loader_from(start), opt, **kw)
    ckpt = DetectionCheckpointer(model, str(out), optimizer=opt, trainer=trainer)
    sched = torch.optim.lr_scheduler.StepLR(opt, 4, gamma=0.5)
    return trainer, [hooks.LRScheduler(opt, sched), hooks.PeriodicCheckpointer(ckpt, 5)]


def assert_same_state(a: SimpleTrainer, b: SimpleTrainer) -> None:
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    moms_a = [s["momentum_buffer"] for s in a.optimizer.state.values()]
    moms_b = [s["momentum_buffer"] for s in b.optimizer.state.values()]
    assert all(torch.equal(x, y) for x, y in zip(moms_a, moms_b, strict=True))
    assert a.optimizer.param_groups[0]["lr"] == b.optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("writer", MODES)
@pytest.mark.parametrize("resume", ["resume_or_load", "fit_ckpt_path"])
def test_interrupted_run_resumes_exactly(tmp_path: Path, writer: str, resume: str) -> None:
    reference, hooks_ref = build(tmp_path, 0)
    fit(writer, reference, hooks_ref, MAX_ITER)
    assert files(tmp_path) == ["last_checkpoint", "model_0000004.pth", "model_0000009.pth", "model_final.pth"]

    resumed, hooks_res = build(tmp_path, 5)
    seen: list[int] = []
    hooks_res.append(hooks.CallbackHook(before_step=lambda t: seen.append(t.iter)))
    if resume == "resume_or_load":  # detectron2's way: DefaultTrainer.resume_or_load, then train(iter + 1, max)
        resumed.register_hooks(hooks_res)  # before loading: the trainer gives the saved states to its hooks
        hooks_res[1].checkpointer.tag_last_checkpoint("model_0000004.pth")  # as if killed after iteration 4
        assert hooks_res[1].checkpointer.resume_or_load("", resume=True) == {"iteration": 4}
        assert resumed.iter == 4
        resumed.train(resumed.iter + 1, MAX_ITER)
    else:  # Lightning's way: the same file as ckpt_path
        fit("lightning", resumed, hooks_res, MAX_ITER, ckpt_path=tmp_path / "model_0000004.pth")
    assert seen == list(range(5, MAX_ITER))
    assert hooks_res[0].scheduler.last_epoch == MAX_ITER
    assert_same_state(resumed, reference)


def test_amp_trainer_grad_scaler_is_restored_by_fit_ckpt_path(tmp_path: Path) -> None:
    def scaler() -> torch.amp.GradScaler:
        return torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=1)

    reference, hooks_ref = build(tmp_path, 0, AMPTrainer, precision=torch.bfloat16, grad_scaler=scaler())
    fit("lightning", reference, hooks_ref, MAX_ITER)
    saved = torch.load(tmp_path / "model_0000004.pth", weights_only=True)
    assert saved["d2_trainer"]["grad_scaler"]["scale"] == 2.0**9  # grown once per step
    assert sorted(saved["d2_trainer"]) == ["grad_scaler", "iteration", "optimizer", "rng"]

    resumed, hooks_res = build(tmp_path, 5, AMPTrainer, precision=torch.bfloat16, grad_scaler=scaler())
    scales: list[float] = []
    hooks_res.append(hooks.CallbackHook(before_train=lambda t: scales.append(t.grad_scaler.get_scale())))
    fit("lightning", resumed, hooks_res, MAX_ITER, ckpt_path=tmp_path / "model_0000004.pth")
    assert scales == [2.0**9]
    assert resumed.grad_scaler.get_scale() == reference.grad_scaler.get_scale() == 2.0**16
    assert_same_state(resumed, reference)


def test_lightning_model_checkpoint_works_next_to_the_hooks(tmp_path: Path) -> None:
    trainer, hook_list = build(tmp_path / "d2", 0)
    lightning_ckpt = ModelCheckpoint(
        dirpath=tmp_path / "pl", every_n_train_steps=4, save_top_k=-1, filename="{step}", save_last=False
    )
    module = D2LightningModule(trainer=trainer)
    lightning_trainer(MAX_ITER, [*hook_list, lightning_ckpt], enable_checkpointing=True).fit(module)
    assert files(tmp_path / "pl") == ["step=12.ckpt", "step=4.ckpt", "step=8.ckpt"]
    assert files(tmp_path / "d2") == ["last_checkpoint", "model_0000004.pth", "model_0000009.pth", "model_final.pth"]
    ours = torch.load(tmp_path / "d2" / "model_0000009.pth", weights_only=True)
    assert ours["callbacks"]["LRScheduler"]["last_epoch"] == 10
    assert any(key.startswith("ModelCheckpoint") for key in ours["callbacks"])
    theirs = torch.load(tmp_path / "pl" / "step=8.ckpt", weights_only=True)
    assert theirs["d2_trainer"]["iteration"] == 7
    assert theirs["callbacks"]["LRScheduler"]["last_epoch"] == 8

    # Lightning's file resumes too, with our hooks in the same Trainer
    resumed, hooks_res = build(tmp_path / "d2", 8)
    fit("lightning", resumed, hooks_res, MAX_ITER, ckpt_path=tmp_path / "pl" / "step=8.ckpt")
    assert_same_state(resumed, trainer)
    # and DetectionCheckpointer reads Lightning's file as weights
    model = SimpleModel()
    assert DetectionCheckpointer(model).load(str(tmp_path / "pl" / "step=12.ckpt")) == {"iteration": 11}
    assert torch.equal(model.mod.weight, trainer.model.mod.weight)


@pytest.mark.parametrize("mode", MODES)
def test_only_checkpoints_of_the_fitted_model_get_lightning_state(tmp_path: Path, mode: str) -> None:
    trainer, hook_list = build(tmp_path, 0)
    other = DetectionCheckpointer(SimpleModel(), str(tmp_path / "other"))
    hook_list.append(hooks.CallbackHook(after_train=lambda t: other.save("other")))
    fit(mode, trainer, hook_list, 5)
    assert MARKER_KEY in torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert sorted(torch.load(tmp_path / "other" / "other.pth", weights_only=True)) == ["model"]
    Checkpointer(trainer.model, str(tmp_path)).save("after_training")
    assert sorted(torch.load(tmp_path / "after_training.pth", weights_only=True)) == ["model"]


def test_key_clash_keeps_detectron2_keys_and_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = SimpleModel()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    ckpt = DetectionCheckpointer(model, str(tmp_path), loops=opt)
    with caplog.at_level(logging.WARNING):
        fit("simple", SimpleTrainer(model, loader_from(0), opt), [hooks.PeriodicCheckpointer(ckpt, 2)], 4)
    assert sorted(torch.load(tmp_path / "model_final.pth", weights_only=True)) == ["iteration", "loops", "model"]
    warnings = [r.getMessage() for r in caplog.records if "used both by this checkpointer" in r.getMessage()]
    assert warnings == [
        "Checkpoint keys ['loops'] are used both by this checkpointer and by Lightning's state; the files keep "
        "detectron2's and leave Lightning's state out. Rename the checkpointables to keep both."
    ]


def test_state_is_gathered_per_process_only_under_plain_strategies() -> None:
    opt = torch.optim.SGD(SimpleModel().parameters(), 0.1)
    single = SingleDeviceStrategy(device=torch.device("cpu"))
    assert _holds_full_state(SimpleNamespace(strategy=single, optimizers=[opt]))
    assert not _holds_full_state(SimpleNamespace(strategy=FSDPStrategy(), optimizers=[opt]))
    zero = SimpleNamespace(consolidate_state_dict=lambda: None)  # like ZeroRedundancyOptimizer
    assert not _holds_full_state(SimpleNamespace(strategy=single, optimizers=[zero]))

"""Tests for hooks.PeriodicCheckpointer (and fvcore's PeriodicCheckpointer it builds on), in both run modes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from d2lightning.checkpoint import Checkpointer, DetectionCheckpointer
from d2lightning.checkpoint import PeriodicCheckpointer as PlainPeriodicCheckpointer
from d2lightning.checkpoint.lightning_state import MARKER_KEY
from d2lightning.engine import hooks
from d2lightning.solver import build_lr_scheduler
from d2lightning.utils.events import JSONWriter
from tests.helpers.checkpoint import MODES, files, fit, new_trainer
from tests.helpers.solver import solver_cfg
from tests.helpers.training import SimpleModel


@pytest.mark.parametrize("mode", MODES)
def test_detectron2_checkpoint_resume_case(tmp_path: Path, mode: str) -> None:
    """detectron2's tests/test_engine.py::test_checkpoint_resume."""
    model = SimpleModel()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, 3)
    trainer = new_trainer(model, opt)
    checkpointer = Checkpointer(model, str(tmp_path), opt=opt, trainer=trainer)
    fit(mode, trainer, [hooks.LRScheduler(scheduler=scheduler), hooks.PeriodicCheckpointer(checkpointer, 10)], 12)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)
    assert scheduler.last_epoch == 12
    assert files(tmp_path) == ["last_checkpoint", "model_0000009.pth", "model_final.pth"]

    opt = torch.optim.SGD(model.parameters(), 999)  # lr will be loaded
    trainer = new_trainer(model, opt)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, 3)
    trainer.register_hooks([hooks.LRScheduler(scheduler=scheduler)])
    Checkpointer(model, str(tmp_path), opt=opt, trainer=trainer).resume_or_load("non_exist.pth")
    assert trainer.iter == 11
    assert scheduler.last_epoch == 12
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_oracle_hooked_run_checkpoints(tmp_path: Path, mode: str) -> None:
    """detectron2-oracle.json "hooked_run", without its EvalHook (files, last_checkpoint, model_final)."""
    model = SimpleModel(two_losses=True)
    opt = torch.optim.SGD(model.parameters(), 0.1)
    cfg = solver_cfg(BASE_LR=0.1, STEPS=[12, 18], WARMUP_ITERS=4, WARMUP_FACTOR=0.01, MAX_ITER=23)
    hook_list = [
        hooks.IterationTimer(),
        hooks.LRScheduler(opt, build_lr_scheduler(cfg, opt)),
        hooks.PeriodicCheckpointer(DetectionCheckpointer(model, str(tmp_path), optimizer=opt), 6, 23, 2),
        hooks.PeriodicWriter([JSONWriter(str(tmp_path / "metrics.json"))], period=5),
    ]
    fit(mode, new_trainer(model, opt), hook_list, 23)
    assert files(tmp_path) == [
        "last_checkpoint",
        "metrics.json",
        "model_0000011.pth",
        "model_0000017.pth",
        "model_final.pth",
    ]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    lightning_keys = final[MARKER_KEY]["lightning_keys"]
    # detectron2's keys, plus Lightning's full state (for Trainer.fit(ckpt_path=...)) and the marker naming it
    assert sorted(set(final) - set(lightning_keys) - {MARKER_KEY}) == ["iteration", "model", "optimizer"]
    assert {"state_dict", "loops", "optimizer_states", "callbacks", "global_step"} <= set(lightning_keys)
    assert final["iteration"] == 22
    assert final["global_step"] == 23
    assert [json.loads(line)["iteration"] for line in (tmp_path / "metrics.json").read_text().splitlines()] == [
        4,
        9,
        14,
        19,
        22,
    ]
    # loading returns detectron2's leftovers only
    assert DetectionCheckpointer(SimpleModel(two_losses=True)).load(str(tmp_path / "model_final.pth")) == {
        "iteration": 22,
        "optimizer": final["optimizer"],
    }


@pytest.mark.parametrize("mode", MODES)
def test_files_and_last_checkpoint_after_each_iteration(tmp_path: Path, mode: str) -> None:
    seen: list[tuple[int, list[str], str]] = []

    def record(trainer: Any) -> None:
        last = tmp_path / "last_checkpoint"
        seen.append((trainer.iter, files(tmp_path), last.read_text() if last.exists() else ""))

    model = SimpleModel()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    ckpt = DetectionCheckpointer(model, str(tmp_path))
    fit(
        mode,
        new_trainer(model, opt),
        [hooks.PeriodicCheckpointer(ckpt, 3, max_to_keep=2), hooks.CallbackHook(after_step=record)],
        9,
    )
    m = "model_{:07d}.pth".format
    assert seen == [
        (0, [], ""),
        (1, [], ""),
        (2, ["last_checkpoint", m(2)], m(2)),
        (3, ["last_checkpoint", m(2)], m(2)),
        (4, ["last_checkpoint", m(2)], m(2)),
        (5, ["last_checkpoint", m(2), m(5)], m(5)),
        (6, ["last_checkpoint", m(2), m(5)], m(5)),
        (7, ["last_checkpoint", m(2), m(5)], m(5)),
        (8, ["last_checkpoint", m(5), m(8), "model_final.pth"], "model_final.pth"),
    ]


def test_max_to_keep_counts_only_files_this_run_wrote(tmp_path: Path) -> None:
    model = SimpleModel()
    earlier = ["model_0000100.pth", "model_final.pth"]
    for name in earlier:
        (tmp_path / name).write_bytes(b"from an earlier run")
    ckpt = Checkpointer(model, str(tmp_path))
    fit(
        "simple",
        new_trainer(model, torch.optim.SGD(model.parameters(), 0.1)),
        [hooks.PeriodicCheckpointer(ckpt, 2, max_to_keep=1)],
        7,
    )
    assert files(tmp_path) == ["last_checkpoint", "model_0000005.pth", "model_0000100.pth", "model_final.pth"]
    assert (tmp_path / "model_0000100.pth").read_bytes() == b"from an earlier run"


def test_nothing_is_written_or_deleted_when_not_saving_to_disk(tmp_path: Path) -> None:
    model = SimpleModel()
    (tmp_path / "model_0000001.pth").write_bytes(b"old")
    ckpt = DetectionCheckpointer(model, str(tmp_path), save_to_disk=False)  # as on a non-main process
    periodic = hooks.PeriodicCheckpointer(ckpt, 1, max_to_keep=1)
    fit("simple", new_trainer(model, torch.optim.SGD(model.parameters(), 0.1)), [periodic], 4)
    assert files(tmp_path) == ["model_0000001.pth"]
    assert periodic.recent_checkpoints == []


def test_max_iter_comes_from_the_trainer(tmp_path: Path) -> None:
    model = SimpleModel()
    periodic = hooks.PeriodicCheckpointer(Checkpointer(model, str(tmp_path)), 100, max_iter=1000)
    fit("simple", new_trainer(model, torch.optim.SGD(model.parameters(), 0.1)), [periodic], 3)
    assert periodic.max_iter == 3
    assert files(tmp_path) == ["last_checkpoint", "model_final.pth"]
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == 2


class StopAt(Callback):
    """Lightning's clean early stop (what EarlyStopping does) after iteration ``it``."""

    def __init__(self, it: int) -> None:
        self.it = it

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step == self.it + 1:
            trainer.should_stop = True


@pytest.mark.parametrize("mode", MODES)
def test_early_stop_saves_final_with_the_last_iteration_done(tmp_path: Path, mode: str) -> None:
    model = SimpleModel()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    trainer = new_trainer(model, opt)
    ckpt = DetectionCheckpointer(model, str(tmp_path), trainer=trainer)
    fit(mode, trainer, [hooks.PeriodicCheckpointer(ckpt, 4), StopAt(5)], 20)
    assert trainer.iter == trainer.max_iter == 6
    assert files(tmp_path) == ["last_checkpoint", "model_0000003.pth", "model_final.pth"]
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert (final["iteration"], final["trainer"]["iteration"]) == (5, 5)

    resumed = new_trainer(SimpleModel(), torch.optim.SGD(model.parameters(), 0.1))
    DetectionCheckpointer(resumed.model, str(tmp_path), trainer=resumed).resume_or_load("")
    assert resumed.iter == 5  # DefaultTrainer would continue at 6


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fail_at", [6, 7])
def test_nothing_is_saved_after_a_crash(tmp_path: Path, mode: str, fail_at: int) -> None:
    model = SimpleModel(fail_at_call=fail_at)
    ckpt = DetectionCheckpointer(model, str(tmp_path))
    with pytest.raises(RuntimeError, match="model failed"):
        fit(
            mode, new_trainer(model, torch.optim.SGD(model.parameters(), 0.1)), [hooks.PeriodicCheckpointer(ckpt, 5)], 8
        )
    assert files(tmp_path) == ["last_checkpoint", "model_0000004.pth"]


def test_plain_periodic_checkpointer_step_and_save(tmp_path: Path) -> None:
    model = SimpleModel()
    periodic = PlainPeriodicCheckpointer(Checkpointer(model, str(tmp_path)), 2, max_iter=4, file_prefix="net")
    for it in range(4):
        periodic.step(it, epoch=7)
    periodic.save("manual", note=1)
    assert files(tmp_path) == ["last_checkpoint", "manual.pth", "net_0000001.pth", "net_0000003.pth", "net_final.pth"]
    final = torch.load(tmp_path / "net_final.pth", weights_only=True)
    assert (final["iteration"], final["epoch"]) == (3, 7)
    assert (tmp_path / "last_checkpoint").read_text() == "manual.pth"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"period": 0}, ValueError, "period must be an int >= 1, got 0"),
        ({"period": 2.5}, ValueError, "period must be an int >= 1, got 2.5"),
        ({"period": 1, "max_to_keep": 0}, ValueError, "max_to_keep must be None or an int >= 1, got 0"),
        ({"period": 1, "max_iter": -1}, ValueError, "max_iter must be None or an int >= 0, got -1"),
        ({"period": 1, "file_prefix": ""}, ValueError, "file_prefix must be a non-empty file name, got ''"),
        ({"period": 1, "file_prefix": "a/b"}, ValueError, "file_prefix must be a non-empty file name, got 'a/b'"),
        ({"period": 1, "file_prefix": 3}, TypeError, "file_prefix must be a str, got int"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        hooks.PeriodicCheckpointer(Checkpointer(SimpleModel()), **kwargs)


def test_checkpointer_without_save_is_refused() -> None:
    with pytest.raises(TypeError, match="checkpointer must have a save\\(name, \\*\\*extra\\) method, got str"):
        hooks.PeriodicCheckpointer("ckpt", 10)

"""Checkpoints cross over between detectron2 and d2lightning, both ways.

1. ``DefaultTrainer`` with a detectron2 config (both libraries' trainers use detectron2's DetectionCheckpointer):
   a run of one library is resumed by the other with ``resume_or_load(resume=True)`` — same iteration, LR,
   optimizer and scheduler state, then the same losses and LRs as the writer's own library resuming it.
2. The two checkpointer implementations (detectron2's / fvcore's, and d2lightning's, whose files also hold
   Lightning's state) read each other's files under ``SimpleTrainer`` with detectron2's ``LRScheduler`` hook
   semantics: a torch scheduler's state is restored from the file; a ``ParamScheduler`` given to the hook is
   stateless, ignored on load and wrapped at ``before_train`` to continue from the restored iteration. The
   resumed run then equals the writer's uninterrupted run, bit for bit.
3. A checkpoint of another model: d2lightning's checkpointer reports exactly what detectron2's (fvcore's) does —
   one "Skip loading parameter" warning per shape mismatch, the missing keys, the unexpected keys.
"""

from __future__ import annotations

import copy
import itertools
import logging
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers.detectron2_runs import DETECTRON2_MARKS, rcnn_cfg, small_rcnn, synthetic_datasets
from tests.helpers.training import SimpleModel, infinite_loader

pytestmark = DETECTRON2_MARKS

TRAIN = "d2l_crossover_train"
LIBRARIES = ["detectron2", "d2lightning"]


def assert_same_state(a: Any, b: Any, where: str = "state") -> None:
    """Nested dicts/lists/tensors are equal (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def histories(trainer: Any, *names: str) -> dict[str, list[tuple[float, int]]]:
    return {name: list(trainer.storage.history(name).values()) for name in names}


# ---------------------------------------------------------------- 1. DefaultTrainer with a detectron2 config
@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with synthetic_datasets(tmp_path_factory.mktemp("images"), **{TRAIN: (4, 0)}):
        yield


def default_trainer(library: str, output_dir: Path) -> Any:
    """``library``'s DefaultTrainer on the shrunk Faster R-CNN: 4 iterations, a checkpoint every 2, no test set."""
    if library == "detectron2":
        from detectron2.engine import DefaultTrainer
    else:
        from d2lightning.engine import DefaultTrainer
    from detectron2.utils.env import seed_all_rng

    seed_all_rng(3)
    return DefaultTrainer(rcnn_cfg(output_dir, TRAIN, None))


@pytest.fixture(scope="module")
def full_runs(datasets: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """OUTPUT_DIR of an uninterrupted 4-iteration run of each library (its losses in ``total_loss.pt``)."""
    dirs = {}
    for library in LIBRARIES:
        dirs[library] = tmp_path_factory.mktemp(f"{library}_full")
        trainer = default_trainer(library, dirs[library])
        trainer.resume_or_load(resume=False)
        trainer.train()
        torch.save(histories(trainer, "total_loss"), dirs[library] / "total_loss.pt")
    return dirs


@pytest.mark.slow
@pytest.mark.parametrize("writer", LIBRARIES)
def test_default_trainer_resumes_the_other_librarys_run(
    writer: str, full_runs: dict[str, Path], tmp_path: Path
) -> None:
    from d2lightning.utils.env import set_rng_states

    saved = torch.load(full_runs[writer] / "model_0000001.pth", weights_only=False)
    assert sorted(saved["trainer"]) == (
        ["_trainer", "hooks", "iteration"]
        if writer == "detectron2"
        else ["_trainer", "data", "hooks", "iteration", "rng"]
    )
    restored, trained = {}, {}
    for reader in LIBRARIES:
        output_dir = tmp_path / reader
        output_dir.mkdir()
        shutil.copy(full_runs[writer] / "model_0000001.pth", output_dir)
        (output_dir / "last_checkpoint").write_text("model_0000001.pth")
        trainer = default_trainer(reader, output_dir)
        trainer.resume_or_load(resume=True)
        restored[reader] = copy.deepcopy(  # a copy: training changes these tensors in place
            {
                "start_iter": trainer.start_iter,
                "iter": trainer.iter,
                "model": trainer.model.state_dict(),
                "optimizer": trainer.optimizer.state_dict(),
                "scheduler": trainer.scheduler.state_dict(),
                "lr": [g["lr"] for g in trainer.optimizer.param_groups],
            }
        )
        torch.manual_seed(7)
        if "rng" in saved["trainer"] and reader == "detectron2":
            set_rng_states(saved["trainer"]["rng"])  # d2lightning restores the saved RNG states; detectron2 does not
        trainer.train()
        trained[reader] = histories(trainer, "total_loss", "lr")
        trained[reader]["files"] = sorted(p.name for p in output_dir.glob("model_*.pth"))  # type: ignore[assignment]

    assert_same_state(restored["detectron2"], restored["d2lightning"])
    assert_same_state(restored["d2lightning"]["model"], saved["model"])
    assert_same_state(restored["d2lightning"]["optimizer"], saved["trainer"]["_trainer"]["optimizer"])
    assert (restored["d2lightning"]["start_iter"], restored["d2lightning"]["iter"]) == (2, 1)
    assert restored["d2lightning"]["scheduler"]["last_epoch"] == 2
    assert restored["d2lightning"]["lr"] == [pytest.approx(0.01)] * len(restored["d2lightning"]["lr"])
    for reader in LIBRARIES:  # both continue at iteration 2, on the same schedule, writing the same files
        assert [it for _, it in trained[reader]["total_loss"]] == [2, 3]
        assert trained[reader]["lr"] == [(pytest.approx(0.01), 2), (pytest.approx(0.001), 3)]
        assert trained[reader]["files"] == ["model_0000001.pth", "model_0000003.pth", "model_final.pth"]
    if writer == "d2lightning":
        # d2lightning continues its own run exactly (RNG states, the loader's stream); detectron2 restarts its stream
        uninterrupted = torch.load(full_runs[writer] / "total_loss.pt", weights_only=True)["total_loss"]
        assert trained["d2lightning"]["total_loss"] == uninterrupted[2:]


# ---------------------------------------------------------------- 2. the two checkpointer implementations
MAX_ITER, PERIOD, RESUME_FROM = 6, 3, 2  # checkpoints after iterations 2 and 5; resume after 2
SCHEDULERS = ["torch scheduler", "ParamScheduler"]


def _scheduler(library: str, kind: str, optimizer: torch.optim.Optimizer) -> Any:
    """Warmup (2 iterations from 0.1x) then x0.1 at iteration 4 over MAX_ITER, built with ``library``'s solver."""
    if library == "detectron2":
        from detectron2.solver import LRMultiplier, WarmupParamScheduler
        from fvcore.common.param_scheduler import MultiStepParamScheduler
    else:
        from d2lightning.solver import LRMultiplier, MultiStepParamScheduler, WarmupParamScheduler
    schedule = WarmupParamScheduler(
        MultiStepParamScheduler([1.0, 0.1], milestones=[4], num_updates=MAX_ITER), 0.1, 2 / MAX_ITER
    )
    return schedule if kind == "ParamScheduler" else LRMultiplier(optimizer, schedule, MAX_ITER)


def _simple_trainer(library: str, kind: str, output_dir: Path, loader: Iterator[Any]) -> tuple[Any, Any]:
    """``library``'s SimpleTrainer with its LRScheduler and PeriodicCheckpointer hooks and DetectionCheckpointer."""
    if library == "detectron2":
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.engine import SimpleTrainer, hooks
    else:
        from d2lightning.checkpoint import DetectionCheckpointer
        from d2lightning.engine import SimpleTrainer, hooks
    output_dir.mkdir(exist_ok=True)  # fvcore's checkpointer does not create it
    torch.manual_seed(0)
    model = SimpleModel(two_losses=True)
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    trainer = SimpleTrainer(model, loader, optimizer)
    checkpointer = DetectionCheckpointer(model, str(output_dir), trainer=trainer)
    trainer.register_hooks(
        [
            hooks.LRScheduler(optimizer, _scheduler(library, kind, optimizer)),
            hooks.PeriodicCheckpointer(checkpointer, PERIOD),
        ]
    )
    return trainer, checkpointer


@pytest.mark.parametrize("kind", SCHEDULERS)
@pytest.mark.parametrize("writer, reader", [("detectron2", "d2lightning"), ("d2lightning", "detectron2")])
def test_checkpointers_read_each_others_files(writer: str, reader: str, kind: str, tmp_path: Path) -> None:
    full, _ = _simple_trainer(writer, kind, tmp_path / "full", infinite_loader())
    full.train(0, MAX_ITER)
    name = f"model_{RESUME_FROM:07d}.pth"
    saved = torch.load(tmp_path / "full" / name, weights_only=False)
    assert ("d2lightning" in saved) == (writer == "d2lightning")  # d2lightning's files carry Lightning's state

    (tmp_path / "resumed").mkdir()
    shutil.copy(tmp_path / "full" / name, tmp_path / "resumed")
    (tmp_path / "resumed" / "last_checkpoint").write_text(name)
    skipped = itertools.islice(infinite_loader(), RESUME_FROM + 1, None)  # the batches the writer has used
    resumed, checkpointer = _simple_trainer(reader, kind, tmp_path / "resumed", skipped)
    extra = checkpointer.resume_or_load("", resume=True)
    assert extra["iteration"] == resumed.iter == RESUME_FROM
    assert_same_state(resumed.model.state_dict(), saved["model"])
    assert_same_state(resumed.optimizer.state_dict(), saved["trainer"]["optimizer"])  # checked before training
    resumed.train(resumed.iter + 1, MAX_ITER)

    keys = ("total_loss", "loss_a", "lr")
    expected = {k: [(v, it) for v, it in h if it > RESUME_FROM] for k, h in histories(full, *keys).items()}
    assert histories(resumed, *keys) == expected
    assert [it for _, it in expected["lr"]] == [3, 4, 5]
    assert [v for v, _ in expected["lr"]] == [pytest.approx(0.1), pytest.approx(0.01), pytest.approx(0.01)]
    assert_same_state(resumed.model.state_dict(), full.model.state_dict())
    final = torch.load(tmp_path / "resumed" / "model_final.pth", weights_only=False)
    assert final["iteration"] == MAX_ITER - 1


# ---------------------------------------------------------------- 3. the message for an incompatible checkpoint
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # fvcore colours the key lines when printing to a terminal

#: Loading the shrunk Faster R-CNN (2 classes) into one with 3 classes, one box-head conv and one box-head FC.
EXPECTED_MESSAGES = [
    "Skip loading parameter 'roi_heads.box_predictor.cls_score.weight' to the model due to incompatible shapes: "
    "(3, 1024) in the checkpoint but (4, 1024) in the model! You might want to double check if this is expected.",
    "Skip loading parameter 'roi_heads.box_predictor.cls_score.bias' to the model due to incompatible shapes: "
    "(3,) in the checkpoint but (4,) in the model! You might want to double check if this is expected.",
    "Skip loading parameter 'roi_heads.box_predictor.bbox_pred.weight' to the model due to incompatible shapes: "
    "(8, 1024) in the checkpoint but (12, 1024) in the model! You might want to double check if this is expected.",
    "Skip loading parameter 'roi_heads.box_predictor.bbox_pred.bias' to the model due to incompatible shapes: "
    "(8,) in the checkpoint but (12,) in the model! You might want to double check if this is expected.",
    "Some model parameters or buffers are not found in the checkpoint:\n"
    "roi_heads.box_head.conv1.{bias, weight}\n"
    "roi_heads.box_predictor.bbox_pred.{bias, weight}\n"
    "roi_heads.box_predictor.cls_score.{bias, weight}",
    "The checkpoint state_dict contains keys that are not used by the model:\n  roi_heads.box_head.fc2.{bias, weight}",
]


class _Collect(logging.Handler):
    """Collects the messages of one logger directly (whatever its propagation, which setup_logger turns off)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(_ANSI.sub("", record.getMessage()))


def _load_messages(checkpointer_class: Callable[..., Any], path: Path, logger_name: str) -> list[str]:
    model = small_rcnn(
        overrides=[
            "MODEL.ROI_HEADS.NUM_CLASSES",
            "3",
            "MODEL.ROI_BOX_HEAD.NUM_CONV",
            "1",
            "MODEL.ROI_BOX_HEAD.NUM_FC",
            "1",
        ]
    )
    logger, collect = logging.getLogger(logger_name), _Collect()
    logger.addHandler(collect)
    try:
        checkpointer_class(model).load(str(path))
    finally:
        logger.removeHandler(collect)
    return collect.messages


@pytest.mark.parametrize("writer", LIBRARIES)
def test_incompatible_checkpoint_messages_are_detectron2s(writer: str, tmp_path: Path) -> None:
    from detectron2.checkpoint import DetectionCheckpointer as D2Checkpointer

    from d2lightning.checkpoint import DetectionCheckpointer

    writer_class = D2Checkpointer if writer == "detectron2" else DetectionCheckpointer
    writer_class(small_rcnn(), save_dir=str(tmp_path)).save("model_0000009", iteration=9)
    path = tmp_path / "model_0000009.pth"
    ours = _load_messages(DetectionCheckpointer, path, "d2lightning.checkpoint.checkpointer")
    theirs = _load_messages(D2Checkpointer, path, "fvcore.common.checkpoint")
    assert ours == theirs == EXPECTED_MESSAGES

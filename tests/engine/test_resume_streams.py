"""Exact resume of the data stream where users train: stateful loaders under a plain Trainer, and what is said when
a stream cannot continue exactly.

A run of 8 iterations stopped after 4 and resumed in a fresh trainer must end with the uninterrupted run's weights:
the model has dropout and the loader shuffles, so a resume that restarts the data stream or redraws random numbers
diverges.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from d2lightning.checkpoint import DetectionCheckpointer
from d2lightning.data.build import build_batch_data_loader
from d2lightning.data.samplers import TrainingSampler
from d2lightning.engine import D2LightningModule, SimpleTrainer, hooks
from tests.helpers.training import lightning_trainer

StatefulDataLoader = pytest.importorskip("torchdata.stateful_dataloader").StatefulDataLoader

pytestmark = pytest.mark.usefixtures("one_thread")


class Points(torch.utils.data.Dataset):
    """16 samples; sample ``i`` is ``(i, x_i)``."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(i), torch.arange(3, dtype=torch.float32) * (i + 1) / 16


class Dropping(nn.Module):
    """A detectron2-style model with dropout; remembers which samples it trained on."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Linear(8, 1))
        self.seen: list[int] = []

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        if isinstance(batch, list) and isinstance(batch[0], tuple):  # detectron2-style loaders: a list of samples
            batch = (torch.stack([i for i, _ in batch]), torch.stack([x for _, x in batch]))
        index, x = batch
        self.seen += index.tolist()
        return {"loss": (self.net(x) - 1).pow(2).mean()}


def _fresh(make_loader: Any = None) -> tuple[Dropping, D2LightningModule]:
    """A new model and module, as a new process builds them: the same seed first (torchdata's sampler draws its own
    seed when the loader is built)."""
    torch.manual_seed(0)
    model = Dropping()
    loader = make_loader() if make_loader is not None else None
    return model, D2LightningModule(model, loader, torch.optim.SGD(model.parameters(), lr=0.1))


def _stateful(generator: torch.Generator | None = None) -> Any:
    """Shuffled by the global generator (whose state the checkpoint restores), or by ``generator``."""
    return StatefulDataLoader(Points(), batch_size=4, shuffle=True, generator=generator)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _checkpointing_trainer(out: Path, module: D2LightningModule, max_steps: int, **kwargs: Any) -> pl.Trainer:
    checkpointer = DetectionCheckpointer(module.model, str(out), trainer=module.d2_trainer)
    return lightning_trainer(max_steps, [hooks.PeriodicCheckpointer(checkpointer, 4)], **kwargs)


def test_a_stateful_loader_with_its_own_generator_is_named_in_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, module = _fresh(lambda: _stateful(torch.Generator().manual_seed(3)))
    _checkpointing_trainer(tmp_path, module, 2).fit(module)
    _, module = _fresh(lambda: _stateful(torch.Generator().manual_seed(3)))
    with caplog.at_level(logging.WARNING, logger="d2lightning"):
        _checkpointing_trainer(tmp_path, module, 4).fit(module, ckpt_path=str(tmp_path / "model_final.pth"))
    lines = [r.getMessage() for r in caplog.records if "generator=" in r.getMessage()]
    assert len(lines) == 1
    assert "shuffled differently" in lines[0] and "Leave generator=None" in lines[0]


def test_a_stateful_loader_of_the_module_resumes_exactly_through_fit_ckpt_path(tmp_path: Path) -> None:
    model, module = _fresh(_stateful)
    _checkpointing_trainer(tmp_path / "straight", module, 8).fit(module)
    straight, seen = _weights(model), list(model.seen)

    model, module = _fresh(_stateful)
    _checkpointing_trainer(tmp_path / "stopped", module, 4).fit(module)
    model, module = _fresh(_stateful)  # a new process: new model, loader and trainer
    trainer = _checkpointing_trainer(tmp_path / "stopped", module, 8)
    trainer.fit(module, ckpt_path=str(tmp_path / "stopped" / "model_0000003.pth"))
    assert seen[16:] == model.seen  # the second epoch's order, as uninterrupted (not the first epoch again)
    assert all(torch.equal(w, model.state_dict()[k]) for k, w in straight.items())


def test_a_stateful_loader_given_to_the_trainer_resumes_exactly_through_its_own_checkpoints(tmp_path: Path) -> None:
    model, module = _fresh()
    lightning_trainer(8).fit(module, train_dataloaders=_stateful())
    straight = _weights(model)

    model, module = _fresh()
    every4 = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    lightning_trainer(2, [every4], enable_checkpointing=True).fit(module, train_dataloaders=_stateful())
    model, module = _fresh()
    resumed = lightning_trainer(8)
    resumed.fit(module, train_dataloaders=_stateful(), ckpt_path=str(tmp_path / "epoch=0-step=2.ckpt"))
    assert all(torch.equal(w, model.state_dict()[k]) for k, w in straight.items())


def test_a_loader_that_cannot_resume_is_named_in_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def endless() -> Any:
        while True:
            yield torch.tensor([0, 1]), torch.rand(2, 3)

    trainer = SimpleTrainer(Dropping(), endless(), torch.optim.SGD(Dropping().parameters(), 0.1))
    with caplog.at_level(logging.WARNING, logger="d2lightning"):
        trainer.train(3, 5)
    lines = [r.getMessage() for r in caplog.records if "cannot be resumed" in r.getMessage()]
    assert len(lines) == 1
    assert "The train loader builtins.generator cannot be resumed at iteration 3" in lines[0]
    assert "StatefulDataLoader" in lines[0]


def _own_loader(batch: int) -> Any:
    return build_batch_data_loader(Points(), TrainingSampler(16, seed=1), batch, num_workers=0)


def test_a_checkpoint_whose_stream_no_longer_fits_says_what_changed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def run(batch: int, stop: int) -> SimpleTrainer:
        model = Dropping()
        trainer = SimpleTrainer(model, _own_loader(batch), torch.optim.SGD(model.parameters(), 0.1))
        checkpointer = DetectionCheckpointer(model, str(tmp_path), trainer=trainer)
        trainer.register_hooks([hooks.PeriodicCheckpointer(checkpointer, 2)])
        checkpointer.resume_or_load("", resume=True)
        trainer.train(trainer.iter + 1 if checkpointer.has_checkpoint() else 0, stop)
        return trainer

    run(4, 2)
    with caplog.at_level(logging.WARNING, logger="d2lightning"):
        trainer = run(2, 4)  # the batch size changed since the checkpoint was written
    lines = [r.getMessage() for r in caplog.records if "changed from" in r.getMessage()]
    assert len(lines) == 1
    assert "the batch size per process changed from 4 to 2" in lines[0]
    assert lines[0].endswith("the data stream restarts from its first batch")
    assert trainer.iter == 4

"""A Lightning user's habits with ``D2LightningModule``: each idiom does what a Lightning user expects.

Data from the Trainer (datamodule, ``train_dataloaders=``, a ``train_dataloader()`` override), validation every N
iterations, training scalars in ``callback_metrics`` for monitors, ``ckpt_path="last"`` with detectron2's
checkpointer, ``*-true`` precisions, ``Trainer(accumulate_grad_batches=N)`` and ``gradient_clip_val``,
``validate``/``test``/``predict`` — and a clear error, at fit start, for what cannot work.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader

from d2lightning.checkpoint import DetectionCheckpointer
from d2lightning.engine import D2LightningModule, SimpleTrainer, hooks
from tests.helpers import REPO
from tests.helpers.distributed import LAUNCHER_VARS, free_port, read_results
from tests.helpers.lightning_data import DataModule, Indexed, IndexModel, endless, module_without_loader
from tests.helpers.training import Recorder, expected_calls, lightning_trainer

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- data from Lightning
@pytest.mark.parametrize("how", ["datamodule", "train_dataloaders", "train_dataloader_override"])
def test_the_model_trains_on_the_trainers_batches(how: str) -> None:
    module = module_without_loader()
    trainer = lightning_trainer(6)
    if how == "datamodule":
        trainer.fit(module, datamodule=DataModule())
    elif how == "train_dataloaders":
        trainer.fit(module, train_dataloaders=DataLoader(Indexed(16), batch_size=4))
    else:

        class WithLoader(D2LightningModule):
            def train_dataloader(self) -> DataLoader:
                return DataLoader(Indexed(16), batch_size=4)

        model = IndexModel()
        module = WithLoader(model, None, torch.optim.SGD(model.parameters(), 0.1))
        trainer.fit(module)
    # 16 samples in batches of 4: 4 iterations per epoch, 6 iterations = one epoch and a half, in order
    assert module.model.seen == list(range(16)) + list(range(8))
    assert trainer.global_step == 6


@pytest.mark.parametrize("owner", ["datamodule", "module"])
def test_batch_transfer_hooks_run_once_per_batch_as_in_lightnings_loop(owner: str) -> None:
    calls: list[str] = []

    def before(batch: Any, dataloader_idx: int) -> Any:
        calls.append("before")
        return batch[0] + 100, batch[1]

    def transfer(batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        calls.append("transfer")
        return batch

    def after(batch: Any, dataloader_idx: int) -> Any:
        calls.append("after")
        return batch[0] + 1000, batch[1]

    hooks_of = {
        "on_before_batch_transfer": before,
        "transfer_batch_to_device": transfer,
        "on_after_batch_transfer": after,
    }
    module, dm = module_without_loader(), DataModule(n=8)
    for name, fn in hooks_of.items():
        setattr(dm if owner == "datamodule" else module, name, fn)
    if owner == "datamodule":
        lightning_trainer(2).fit(module, datamodule=dm)
    else:
        lightning_trainer(2).fit(module, train_dataloaders=dm.train_dataloader())
    assert module.model.seen == [1100 + i for i in range(8)]  # each hook once per batch, before then after
    assert calls == ["before", "transfer", "after"] * 2


def test_transfer_hooks_that_cannot_run_on_the_modules_own_loader_are_named_in_a_warning() -> None:
    class Moving(D2LightningModule):
        def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
            return batch

    model = IndexModel()
    module = Moving(model, endless(), torch.optim.SGD(model.parameters(), 0.1))
    with pytest.warns(UserWarning, match=r"Moving overrides transfer_batch_to_device.*train_dataloaders=loader"):
        lightning_trainer(2).fit(module)
    assert module.trainer.global_step == 2  # the warning does not stop training


def test_hooks_count_iterations_and_see_lightnings_batches_in_order() -> None:
    calls: list[Any] = []
    module = module_without_loader()
    lightning_trainer(5, [Recorder("A", calls)]).fit(module, datamodule=DataModule(n=8, batch_size=2))
    assert calls == expected_calls(["A"], 0, 5)
    assert module.model.seen == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]


def test_a_run_step_that_fetches_with_next_keeps_working_on_lightnings_data() -> None:
    class MyTrainer(SimpleTrainer):
        def run_step(self) -> None:
            data = next(self._data_loader_iter)
            loss = sum(self.model(data).values())
            self.optimizer.zero_grad()
            loss.backward()
            self.after_backward()
            self.optimizer.step()

    model = IndexModel()
    trainer = MyTrainer(model, None, torch.optim.SGD(model.parameters(), 0.1))
    lightning_trainer(3).fit(D2LightningModule(trainer=trainer), train_dataloaders=DataLoader(Indexed(8), 2))
    assert model.seen == [0, 1, 2, 3, 4, 5]


def test_data_time_is_the_time_spent_waiting_for_a_batch() -> None:
    class Slow(Indexed):
        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            time.sleep(0.05)
            return super().__getitem__(i)

    module = module_without_loader()
    lightning_trainer(3).fit(module, train_dataloaders=DataLoader(Slow(8), batch_size=2))
    data_times = [v for v, _ in module.d2_trainer.storage.history("data_time").values()]
    assert len(data_times) == 3
    assert all(t >= 0.09 for t in data_times), data_times  # two samples of 50 ms per batch


def test_an_unsized_finite_loader_ends_its_epoch_without_an_empty_iteration() -> None:
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self) -> Any:
            return (Indexed(16)[i] for i in range(5))

    calls: list[Any] = []
    module = module_without_loader()
    trainer = lightning_trainer(7, [Recorder("A", calls)])
    trainer.fit(module, train_dataloaders=DataLoader(Stream(), batch_size=2))  # batches of 2, 2, 1
    assert calls == expected_calls(["A"], 0, 7)
    assert module.model.seen == [0, 1, 2, 3, 4] * 2 + [0, 1]


def test_accumulation_across_an_epoch_end_uses_the_micro_batches_left() -> None:
    module = module_without_loader()
    trainer = lightning_trainer(3, accumulate_grad_batches=3)
    trainer.fit(module, train_dataloaders=DataLoader(Indexed(8), batch_size=2))  # 4 batches per epoch
    # iteration 0: batches 0-2; iteration 1: batch 3 (the epoch ends); iteration 2: batches 0-2 of epoch 2
    assert module.model.seen == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5]
    assert trainer.global_step == 3


@pytest.mark.parametrize(
    ("module_loader", "trainer_data", "message"),
    [
        (True, True, "got a data_loader and the Trainer got training data too"),
        (False, False, "No training data: pass data_loader= to D2LightningModule, or give the Trainer data"),
    ],
)
def test_data_in_both_places_or_nowhere_is_an_error_at_fit_start(
    module_loader: bool, trainer_data: bool, message: str
) -> None:
    model = IndexModel()
    module = D2LightningModule(model, endless() if module_loader else None, torch.optim.SGD(model.parameters(), 0.1))
    with pytest.raises(ValueError, match=message):
        lightning_trainer(2).fit(module, datamodule=DataModule() if trainer_data else None)
    assert model.seen == []


def test_a_trainer_without_max_steps_is_still_refused() -> None:
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match=r"create the Trainer with max_steps=N \(got max_steps=-1\)"):
        trainer.fit(module_without_loader(), datamodule=DataModule())


# ---------------------------------------------------------------- validation, test, predict
def test_validation_runs_every_n_iterations_on_an_endless_stream() -> None:
    validated: list[int] = []

    class Validating(D2LightningModule):
        def on_validation_epoch_end(self) -> None:
            validated.append(self.trainer.global_step)

    model = IndexModel()
    module = Validating(model, endless(), torch.optim.SGD(model.parameters(), 0.1))
    trainer = lightning_trainer(7, val_check_interval=3, check_val_every_n_epoch=None, num_sanity_val_steps=0)
    trainer.fit(module, val_dataloaders=DataLoader(Indexed(4), batch_size=2))
    assert validated == [3, 6]
    assert model.eval_batches == 4  # two validations of two batches, in eval mode
    assert model.training  # back in training mode


def test_validation_that_would_never_run_is_an_error_naming_the_setting() -> None:
    model = IndexModel()
    module = D2LightningModule(model, endless(), torch.optim.SGD(model.parameters(), 0.1))
    with pytest.raises(ValueError, match=r"val_check_interval=N, check_val_every_n_epoch=None"):
        lightning_trainer(5).fit(module, val_dataloaders=DataLoader(Indexed(4), batch_size=2))
    assert model.seen == []


def test_an_endless_stream_from_the_trainer_with_validation_at_epoch_ends_is_refused() -> None:
    class Endless(torch.utils.data.IterableDataset):
        def __iter__(self) -> Any:
            return (Indexed(16)[i % 16] for i in itertools.count())

    module = module_without_loader()
    with pytest.raises(ValueError, match=r"Validation would never run"):
        lightning_trainer(3, num_sanity_val_steps=0).fit(
            module, train_dataloaders=DataLoader(Endless(), 2), val_dataloaders=DataLoader(Indexed(4), 2)
        )


def test_validation_at_epoch_end_with_a_finite_datamodule() -> None:
    model = IndexModel()
    module = D2LightningModule(model, None, torch.optim.SGD(model.parameters(), 0.1))
    lightning_trainer(8, num_sanity_val_steps=0).fit(module, datamodule=DataModule(n=8, batch_size=2, val=True))
    assert model.eval_batches == 4  # two epochs of 4 iterations, one validation (2 batches) after each


def test_predict_returns_the_models_eval_outputs() -> None:
    module = module_without_loader()
    predictions = lightning_trainer(1).predict(module, dataloaders=DataLoader(Indexed(6), batch_size=3))
    assert len(predictions) == 2
    x = torch.stack([Indexed(6)[i][1] for i in range(3)])
    assert torch.allclose(predictions[0], module.model.linear(x))
    assert module.model.eval_batches == 2


class MeanEvaluator:
    """A detectron2 DatasetEvaluator: the mean model output over the dataset."""

    def reset(self) -> None:
        self.outputs: list[torch.Tensor] = []

    def process(self, inputs: Any, outputs: torch.Tensor) -> None:
        self.outputs.append(outputs.detach())

    def evaluate(self) -> dict[str, Any]:
        return {"score": {"mean": float(torch.cat(self.outputs).mean())}}


def test_validate_and_test_run_a_detectron2_evaluator_and_log_its_results() -> None:
    module = module_without_loader(evaluator=MeanEvaluator())
    loader = DataLoader(Indexed(6), batch_size=3)
    x = torch.stack([Indexed(6)[i][1] for i in range(6)])
    expected = float(module.model.linear(x).mean())
    (validated,) = lightning_trainer(1).validate(module, dataloaders=loader)
    (tested,) = lightning_trainer(1).test(module, dataloaders=loader)
    assert validated["score/mean"] == pytest.approx(expected)
    assert tested["score/mean"] == pytest.approx(expected)


def test_evaluator_results_drive_early_stopping_during_fit() -> None:
    model = IndexModel()
    module = D2LightningModule(model, endless(), torch.optim.SGD(model.parameters(), 0.0), evaluator=MeanEvaluator())
    stopper = EarlyStopping(monitor="score/mean", patience=1, mode="max", strict=True)  # lr 0: never improves
    trainer = lightning_trainer(
        20, [stopper], val_check_interval=2, check_val_every_n_epoch=None, num_sanity_val_steps=0
    )
    trainer.fit(module, val_dataloaders=DataLoader(Indexed(4), batch_size=2))
    assert trainer.global_step == 4  # validated at 2 (best) and 4 (no improvement, patience 1): stop


def test_a_bad_evaluator_is_refused() -> None:
    with pytest.raises(TypeError, match="evaluator must be a detectron2 DatasetEvaluator"):
        module_without_loader(evaluator=object())


# ---------------------------------------------------------------- metrics for monitors
def test_training_scalars_are_in_callback_metrics_at_every_step() -> None:
    seen: list[dict[str, float]] = []

    class Look(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            seen.append({k: float(v) for k, v in trainer.callback_metrics.items()})

    model = IndexModel()
    module = D2LightningModule(model, endless(), torch.optim.SGD(model.parameters(), 0.1))
    scheduler = torch.optim.lr_scheduler.StepLR(module.d2_trainer.optimizer, 1, gamma=0.5)
    lightning_trainer(4, [hooks.LRScheduler(scheduler=scheduler), Look()]).fit(module)
    storage = module.d2_trainer.storage
    losses = [v for v, _ in storage.history("total_loss").values()]
    assert [s["total_loss"] for s in seen] == pytest.approx(losses)
    assert all("data_time" in s for s in seen)
    # lr is put by the LRScheduler hook in after_step, before this callback: the lr of each iteration
    assert [s["lr"] for s in seen] == pytest.approx([0.1, 0.05, 0.025, 0.0125])


def test_model_checkpoint_and_early_stopping_monitor_the_training_loss(tmp_path: Path) -> None:
    model = IndexModel()
    module = D2LightningModule(model, endless(), torch.optim.SGD(model.parameters(), 0.1))
    best = ModelCheckpoint(dirpath=tmp_path, monitor="total_loss", every_n_train_steps=2, save_top_k=1)
    stop = EarlyStopping(monitor="total_loss", patience=100, check_on_train_epoch_end=True)
    trainer = lightning_trainer(6, [best, stop], enable_checkpointing=True)
    trainer.fit(module)
    assert best.best_model_path and Path(best.best_model_path).exists()
    assert float(best.best_model_score) == pytest.approx(
        min(v for v, it in module.d2_trainer.storage.history("total_loss").values() if (it + 1) % 2 == 0)
    )
    assert trainer.global_step == 6


# ---------------------------------------------------------------- ckpt_path="last"
def test_ckpt_path_last_finds_the_periodic_checkpointers_last_checkpoint(tmp_path: Path) -> None:
    class Seekable:
        """Batch ``i`` depends only on ``i``; the run seeks it to the iteration it resumes at."""

        def __init__(self) -> None:
            self.start = 0

        def set_start_iteration(self, start: int) -> None:
            self.start = start

        def __iter__(self) -> Any:
            for i in itertools.count(self.start):
                index, x = Indexed(10_000)[i]
                yield index[None], x[None]

    def fit(max_steps: int, ckpt_path: str | None, out: Path) -> tuple[D2LightningModule, list[Any]]:
        torch.manual_seed(0)
        model = IndexModel()
        module = D2LightningModule(model, Seekable(), torch.optim.SGD(model.parameters(), 0.1, momentum=0.9))
        calls: list[Any] = []
        checkpointer = DetectionCheckpointer(model, str(out), trainer=module.d2_trainer)
        callbacks = [hooks.PeriodicCheckpointer(checkpointer, 3), Recorder("A", calls)]
        lightning_trainer(max_steps, callbacks).fit(module, ckpt_path=ckpt_path)
        return module, calls

    fit(5, None, tmp_path)  # writes model_0000002.pth and model_final.pth (iteration 4)
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    resumed, calls = fit(8, "last", tmp_path)
    assert calls[0] == ("A", "before_train", 5)
    assert [it for _, m, it in calls if m == "before_step"] == [5, 6, 7]
    assert resumed.model.seen == list(range(5, 8))
    uninterrupted, _ = fit(8, None, tmp_path / "uninterrupted")
    assert torch.equal(resumed.model.linear.weight, uninterrupted.model.linear.weight)
    assert torch.equal(
        resumed.d2_trainer.optimizer.state_dict()["state"][0]["momentum_buffer"],
        uninterrupted.d2_trainer.optimizer.state_dict()["state"][0]["momentum_buffer"],
    )


def test_ckpt_path_last_without_any_checkpoint_starts_fresh_with_lightnings_warning(tmp_path: Path) -> None:
    module = module_without_loader()
    with pytest.warns(UserWarning, match="no last checkpoint available"):
        lightning_trainer(2).fit(module, datamodule=DataModule(), ckpt_path="last")
    assert module.d2_trainer.start_iter == 0


# ---------------------------------------------------------------- precision and accumulation
@pytest.mark.parametrize(("precision", "dtype"), [("bf16-true", torch.bfloat16), ("64-true", torch.float64)])
@pytest.mark.parametrize("data", ["module", "trainer"])
def test_true_precisions_convert_the_batches_and_train(precision: str, dtype: torch.dtype, data: str) -> None:
    model = IndexModel()
    before = model.linear.weight.detach().clone()
    module = D2LightningModule(model, endless() if data == "module" else None, torch.optim.SGD(model.parameters(), 0.1))
    trainer = lightning_trainer(3, precision=precision)
    trainer.fit(module, datamodule=DataModule() if data == "trainer" else None)
    assert model.linear.weight.dtype == dtype
    assert model.dtypes == [dtype] * 3
    assert not torch.equal(model.linear.weight.detach().to(before.dtype), before)


def test_trainer_accumulation_becomes_detectron2_style_accumulation() -> None:
    calls: list[Any] = []
    module = module_without_loader()
    trainer = lightning_trainer(3, [Recorder("A", calls)], accumulate_grad_batches=4)
    trainer.fit(module, datamodule=DataModule(n=64))
    assert module.model.seen == list(range(48))  # 4 micro-batches of 4 per iteration
    assert trainer.global_step == 3
    assert [it for _, m, it in calls if m == "before_step"] == [0, 1, 2]
    assert trainer.accumulate_grad_batches == 4  # the Trainer's setting is given back after the fit
    assert module.d2_trainer.accumulate_grad_batches == 1


def test_trainer_accumulation_equals_the_module_trainers_own() -> None:
    def weights(trainer_n: int, own_n: int) -> torch.Tensor:
        torch.manual_seed(0)
        model = IndexModel()
        trainer = SimpleTrainer(model, None, torch.optim.SGD(model.parameters(), 0.1), accumulate_grad_batches=own_n)
        lightning_trainer(2, accumulate_grad_batches=trainer_n).fit(
            D2LightningModule(trainer=trainer), datamodule=DataModule(n=32)
        )
        return model.linear.weight.detach()

    assert torch.equal(weights(4, 1), weights(1, 4))


def test_two_different_accumulations_are_an_error() -> None:
    model = IndexModel()
    trainer = SimpleTrainer(model, None, torch.optim.SGD(model.parameters(), 0.1), accumulate_grad_batches=2)
    with pytest.raises(ValueError, match=r"accumulate_grad_batches=4\) and the module's trainer"):
        lightning_trainer(2, accumulate_grad_batches=4).fit(D2LightningModule(trainer=trainer), datamodule=DataModule())


def test_trainer_gradient_clipping_clips_before_each_optimizer_step() -> None:
    norms: list[float] = []

    class Look(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
            grads = [p.grad for p in pl_module.model.parameters()]
            norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    module = module_without_loader()
    trainer = lightning_trainer(3, [Look()], gradient_clip_val=1e-3)
    trainer.fit(module, datamodule=DataModule())
    assert norms == pytest.approx([1e-3] * 3, rel=1e-3)
    assert trainer.gradient_clip_val == 1e-3


def test_self_log_while_training_needs_no_batch_size() -> None:
    class LogLoss(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
            pl_module.log("mirror", trainer.callback_metrics["total_loss"], on_step=True, on_epoch=True)

    module = module_without_loader()
    trainer = lightning_trainer(4, [LogLoss()])
    trainer.fit(module, datamodule=DataModule())
    losses = [v for v, _ in module.d2_trainer.storage.history("total_loss").values()]
    assert float(trainer.callback_metrics["mirror_step"]) == pytest.approx(losses[-1])
    assert float(trainer.callback_metrics["mirror_epoch"]) == pytest.approx(sum(losses) / 4)  # iterations weigh alike


@pytest.mark.slow
def test_two_ddp_processes_train_on_disjoint_samples(tmp_path: Path) -> None:
    """Lightning's distributed sampler goes into the user's map-style loader: each rank sees its own half."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MASTER_PORT=str(free_port()))
    job = REPO / "tests" / "jobs" / "lightning_ddp_job.py"
    proc = subprocess.run(
        [sys.executable, str(job), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = read_results(tmp_path, 2)
    assert len(r0["seen"]) == len(r1["seen"]) == 8  # 4 iterations of 2 samples on each rank
    assert not set(r0["seen"]) & set(r1["seen"])
    assert sorted(r0["seen"] + r1["seen"]) == list(range(16))
    assert r0["global_step"] == r1["global_step"] == 4
    assert r0["weight"] == r1["weight"]  # gradients averaged across ranks


def test_a_model_that_leaves_the_true_precision_inside_gets_a_clear_error() -> None:
    class Float32Inside(IndexModel):
        def forward(self, batch: Any) -> Any:
            _, x = batch
            return {"loss": self.linear(x.float()).mean()}  # x.float(): back to float32 against bfloat16 weights

    model = Float32Inside()
    module = D2LightningModule(model, endless(), torch.optim.SGD(model.parameters(), 0.1))
    with pytest.raises(RuntimeError, match=r"precision='bf16-true'\) converted the weights .* 'bf16-mixed'"):
        lightning_trainer(2, precision="bf16-true").fit(module)


# ---------------------------------------------------------------- the same idioms through SimpleTrainer.train
def test_simple_trainer_train_with_lightning_options_and_a_loss_monitor(tmp_path: Path) -> None:
    """Lightning's options in ``lightning_kwargs`` and monitors in ``register_hooks`` behave as in a Trainer."""
    model = IndexModel()
    trainer = SimpleTrainer(model, endless(), torch.optim.SGD(model.parameters(), 0.1))
    best = ModelCheckpoint(dirpath=tmp_path, monitor="total_loss", every_n_train_steps=1, save_top_k=1)
    trainer.register_hooks([best])
    trainer.lightning_kwargs = {"precision": "bf16-true", "accumulate_grad_batches": 2}
    trainer.train(0, 3)
    assert model.linear.weight.dtype == torch.bfloat16
    assert model.dtypes == [torch.bfloat16] * 6  # 3 iterations of 2 micro-batches, converted
    assert trainer.pl_trainer.global_step == 3
    assert best.best_model_path and Path(best.best_model_path).exists()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert float(best.best_model_score) == pytest.approx(min(losses))

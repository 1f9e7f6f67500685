"""The config's LIGHTNING section through DefaultTrainer: precision, accumulation, EMA, loggers, callbacks, strategy."""

from __future__ import annotations

import csv
import logging
import multiprocessing
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch

from d2lightning.config import ConfigError, get_cfg
from d2lightning.engine import D2LightningModule, SimpleTrainer
from d2lightning.engine.launch import launch
from d2lightning.engine.recipes.lightning_config import lightning_callbacks_from_cfg, lightning_kwargs_from_cfg
from tests.helpers.distributed import free_port, read_results, without_launcher_variables
from tests.helpers.tiny_trainer import CountingStream, TinyModel, TinyTrainer, tiny_trainer_cfg
from tests.jobs.extras_jobs import train_tiny_ddp

BF16 = (True, torch.bfloat16)


def train(cfg: Any) -> TinyTrainer:
    trainer = TinyTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer


# ---------------------------------------------------------------- precision
def test_bf16_mixed_runs_the_forward_under_autocast(tmp_path: Path) -> None:
    trainer = train(tiny_trainer_cfg(str(tmp_path), "LIGHTNING.PRECISION", "bf16-mixed"))
    assert trainer.model.autocast_seen == [BF16] * 4
    assert type(trainer.pl_trainer.precision_plugin).__name__ == "MixedPrecision"


def test_full_precision_has_no_autocast(tmp_path: Path) -> None:
    trainer = train(tiny_trainer_cfg(str(tmp_path)))
    assert [on for on, _ in trainer.model.autocast_seen] == [False] * 4


def test_16_mixed_on_cpu_runs_as_bf16_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("d2lightning"), "propagate", True)
    cfg = tiny_trainer_cfg(str(tmp_path), "LIGHTNING.PRECISION", "16-mixed")
    with caplog.at_level(logging.WARNING, logger="d2lightning.engine.recipes.lightning_config"):
        assert lightning_kwargs_from_cfg(cfg)["precision"] == "bf16-mixed"
    assert "LIGHTNING.PRECISION='16-mixed' runs as 'bf16-mixed' on CPU" in caplog.text
    assert train(cfg).model.autocast_seen == [BF16] * 4


@pytest.mark.filterwarnings("ignore:.*AMP with fp16 is not supported on CPU")
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_precision_from_lightning_kwargs_and_in_a_plain_lightning_trainer(precision: str) -> None:
    # SimpleTrainer: trainer.lightning_kwargs; "16-mixed" on CPU is Lightning's own switch to bfloat16
    model = TinyModel()
    trainer = SimpleTrainer(model, CountingStream(0), torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.lightning_kwargs = {"precision": precision}
    trainer.train(0, 2)
    assert model.autocast_seen == [BF16] * 2
    # D2LightningModule in a Trainer the user builds
    from tests.helpers.training import lightning_trainer

    model = TinyModel()
    module = D2LightningModule(model, CountingStream(0), torch.optim.SGD(model.parameters(), lr=0.1))
    lightning_trainer(2, precision=precision).fit(module)
    assert model.autocast_seen == [BF16] * 2


def test_precision_and_amp_together_is_an_error(tmp_path: Path) -> None:
    cfg = tiny_trainer_cfg(str(tmp_path), "LIGHTNING.PRECISION", "bf16-mixed", "SOLVER.AMP.ENABLED", True)
    with pytest.raises(ValueError, match=r"SOLVER.AMP.ENABLED=True and LIGHTNING.PRECISION='bf16-mixed' both set"):
        TinyTrainer(cfg)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "LIGHTNING.PRECISION",
            "bf17",
            r"Invalid value 'bf17' for config key 'LIGHTNING.PRECISION' \(in override .*\): expected one of",
        ),
        (
            "LIGHTNING.ACCUMULATE_GRAD_BATCHES",
            0,
            r"Invalid value 0 for config key 'LIGHTNING.ACCUMULATE_GRAD_BATCHES' \(in override .*\): expected an int >= 1",
        ),
        (
            "LIGHTNING.EMA.DECAY",
            1.5,
            r"Invalid value 1.5 for config key 'LIGHTNING.EMA.DECAY' \(in override .*\): expected a float in \[0, 1\]",
        ),
    ],
)
def test_invalid_values_name_the_key(key: str, value: Any, message: str) -> None:
    cfg = get_cfg()
    with pytest.raises(ConfigError, match=message):
        cfg.merge_from_list([key, value])


# ---------------------------------------------------------------- accumulation and EMA
def test_accumulation_from_the_config(tmp_path: Path) -> None:
    trainer = train(tiny_trainer_cfg(str(tmp_path), "LIGHTNING.ACCUMULATE_GRAD_BATCHES", 3))
    assert trainer._trainer.accumulate_grad_batches == 3
    assert trainer.data_loader.fetches == 12  # 4 iterations x 3 micro-batches
    assert trainer.iter == 4
    # checkpoint and evaluation periods (2) count iterations
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_0000001.pth", "model_0000003.pth", "model_final.pth"]  # fmt: skip
    assert len(TinyTrainer.evaluated) == 2


def test_accumulation_from_the_config_reaches_the_step_trainer(tmp_path: Path) -> None:
    trainer = TinyTrainer(tiny_trainer_cfg(str(tmp_path), "LIGHTNING.ACCUMULATE_GRAD_BATCHES", 2))
    assert trainer._trainer.accumulate_grad_batches == 2
    assert TinyTrainer(tiny_trainer_cfg(str(tmp_path / "b")))._trainer.accumulate_grad_batches == 1


def test_ema_from_the_config_is_evaluated_saved_and_resumed(tmp_path: Path) -> None:
    opts = ("LIGHTNING.EMA.ENABLED", True, "LIGHTNING.EMA.DECAY", 0.5)
    trainer = train(tiny_trainer_cfg(str(tmp_path), *opts))
    ema = next(h for h in trainer._hooks if type(h).__name__ == "EMA")
    assert (ema.decay, ema.num_updates) == (0.5, 4)
    evaluated = TinyTrainer.evaluated
    assert torch.equal(evaluated[-1], ema.averaged_model.linear.weight)
    assert not torch.allclose(evaluated[-1], trainer.model.linear.weight)
    saved = torch.load(tmp_path / "model_0000001.pth", weights_only=True)["trainer"]["hooks"]["EMA"]
    assert saved["num_updates"] == 2
    torch.testing.assert_close(saved["model"]["linear.weight"], evaluated[0])

    # resume from iteration 1 with 2 more iterations: the average continues from the saved one
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    resumed = TinyTrainer(tiny_trainer_cfg(str(tmp_path), *opts))
    resumed.resume_or_load(resume=True)
    resumed.train()
    ema = next(h for h in resumed._hooks if type(h).__name__ == "EMA")
    assert ema.num_updates == 4


# ---------------------------------------------------------------- loggers and callbacks
def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_storage_scalars_reach_csv_logger_at_their_iterations(tmp_path: Path) -> None:
    cfg = tiny_trainer_cfg(
        str(tmp_path),
        "SOLVER.MAX_ITER", 6,
        "TEST.EVAL_PERIOD", 3,
        "LIGHTNING.LOG_EVERY_N_STEPS", 2,
        "LIGHTNING.LOGGERS", ["lightning.pytorch.loggers.CSVLogger"],
        "LIGHTNING.CALLBACKS", [{"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "step"}}],
    )  # fmt: skip
    trainer = train(cfg)
    rows = read_csv(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")

    def column(name: str) -> dict[int, float]:
        return {int(r["step"]): float(r[name]) for r in rows if r.get(name)}

    # flushed every 2 iterations: the latest value of each scalar, at the iteration it was put at (detectron2's)
    history = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert column("total_loss") == {
        1: pytest.approx(statistics.median(history[:2])),
        3: pytest.approx(statistics.median(history[:4])),
        5: pytest.approx(statistics.median(history[:6])),
    }
    assert sorted(column("lr")) == [1, 3, 5]
    # EvalHook's results at the evaluation iterations (2, and 6 after training), the callback's own column
    assert sorted(column("tiny/w0")) == [2, 6]
    assert column("lr-SGD") == {1: pytest.approx(0.1), 3: pytest.approx(0.1), 5: pytest.approx(0.1)}


@pytest.mark.parametrize(
    ("key", "entry", "message"),
    [
        ("LOGGERS", "no_such_package.Logger", r"LIGHTNING.LOGGERS\[0\]: cannot import 'no_such_package.Logger'"),
        ("LOGGERS", {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"bogus": 1}},
         r"LIGHTNING.LOGGERS\[0\]: lightning.pytorch.loggers.CSVLogger\(.*\) failed: TypeError"),
        ("LOGGERS", "collections.OrderedDict", r"LIGHTNING.LOGGERS\[0\]: collections.OrderedDict is not a lightning.pytorch.loggers.Logger"),
        ("CALLBACKS", "lightning.pytorch.callbacks.NoSuchCallback", r"LIGHTNING.CALLBACKS\[0\]: cannot import"),
        ("CALLBACKS", "collections.OrderedDict", r"LIGHTNING.CALLBACKS\[0\]: collections.OrderedDict is neither a lightning.pytorch.callbacks.Callback nor"),
    ],
)  # fmt: skip
def test_bad_logger_or_callback_names_the_key(tmp_path: Path, key: str, entry: Any, message: str) -> None:
    cfg = tiny_trainer_cfg(str(tmp_path), f"LIGHTNING.{key}", [entry])
    with pytest.raises(ValueError, match=message):
        lightning_kwargs_from_cfg(cfg)
        lightning_callbacks_from_cfg(cfg)


# ---------------------------------------------------------------- strategy, devices, nodes
# (LIGHTNING.STRATEGY fsdp: tests/engine/test_fsdp.py)
@pytest.mark.parametrize(
    ("key", "value"), [("LIGHTNING.DEVICES", 2), ("LIGHTNING.DEVICES", "0,1"), ("LIGHTNING.NUM_NODES", 2)]
)
def test_several_processes_need_a_launcher(tmp_path: Path, key: str, value: Any) -> None:
    with pytest.raises(ValueError, match=r"ask for several processes, but this run has one: .*--num-gpus N"):
        lightning_kwargs_from_cfg(tiny_trainer_cfg(str(tmp_path), key, value))


def test_single_process_settings_go_to_lightning(tmp_path: Path) -> None:
    kwargs = lightning_kwargs_from_cfg(
        tiny_trainer_cfg(str(tmp_path), "LIGHTNING.STRATEGY", "ddp", "LIGHTNING.DEVICES", 1)
    )
    assert (kwargs["strategy"], kwargs["devices"]) == ("ddp", 1)
    assert "strategy" not in lightning_kwargs_from_cfg(tiny_trainer_cfg(str(tmp_path)))


def test_ddp_from_the_config_on_two_processes(tmp_path: Path) -> None:
    with without_launcher_variables():
        launch(train_tiny_ddp, 2, dist_url=f"tcp://127.0.0.1:{free_port()}", args=(str(tmp_path),))
    r0, r1 = read_results(tmp_path, 2)
    assert multiprocessing.active_children() == []
    for r in (r0, r1):
        assert (r["world"], r["strategy"]) == (2, "_AlreadyWrappedDDPStrategy")
        # 4 iterations x 2 micro-batches; the gradients are all-reduced once per iteration (no_sync before)
        assert (r["fetches"], r["allreduces"]) == (8, 4)
        assert (r["lightning_wrapped"]["fetches"], r["lightning_wrapped"]["allreduces"]) == (6, 3)
        assert "LIGHTNING.STRATEGY='ddp_spawn': the processes of this run train with DDP" in r["bad_strategy"]
        assert "LIGHTNING.DEVICES=3, but this run has 2 processes on this machine" in r["bad_devices"]
    assert r0["weight"] == r1["weight"] and r0["ema"] == r1["ema"]
    assert r0["lightning_wrapped"]["weight"] == r1["lightning_wrapped"]["weight"]

    # the same as one process accumulating the 4 micro-batches of both ranks per iteration
    reference = reference_run(tmp_path, 4)
    torch.testing.assert_close(torch.tensor(r0["weight"]), reference.model.linear.weight.detach().flatten())
    ema = next(h for h in reference._hooks if type(h).__name__ == "EMA")
    torch.testing.assert_close(torch.tensor(r0["ema"]), ema.averaged_model.linear.weight.flatten())
    # evaluations (after iterations 1 and 3) on every rank, of the averaged weights
    assert r0["evaluated"][-1] == r0["ema"]


class Interleaved:
    """Per iteration: micro-batches 2i, 2i+1 of rank 0's stream, then those of rank 1's."""

    def __iter__(self) -> Any:
        streams = [iter(CountingStream(100)), iter(CountingStream(101))]
        while True:
            for s in streams:
                yield next(s)
                yield next(s)


def reference_run(tmp_path: Path, micro_batches: int) -> TinyTrainer:
    class Reference(TinyTrainer):
        @classmethod
        def build_train_loader(cls, cfg: Any) -> Any:
            return Interleaved()

    cfg = tiny_trainer_cfg(str(tmp_path / "reference"), "LIGHTNING.ACCUMULATE_GRAD_BATCHES", micro_batches, "LIGHTNING.EMA.ENABLED", True, "LIGHTNING.EMA.DECAY", 0.5)  # fmt: skip
    trainer = Reference(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer

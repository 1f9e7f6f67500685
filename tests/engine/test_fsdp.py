"""Sharded training (FSDP2 on Lightning's ``ModelParallelStrategy``) of detectron2 models, on 2 CPU processes (gloo).

Every entry point — the CLI (``LIGHTNING.STRATEGY fsdp``), ``SimpleTrainer.lightning_kwargs`` and a plain Trainer with
``D2LightningModule`` — trains like DDP, writes detectron2's full checkpoints on rank 0, and resumes exactly; what
cannot be sharded fails at once with one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from d2lightning.config import get_cfg
from d2lightning.engine import EvalHook, FSDPSharding, hooks
from d2lightning.engine.distributed.fsdp import check_hooks_for_sharding, check_sharding_options
from d2lightning.engine.launch import launch
from d2lightning.engine.recipes.lightning_config import lightning_kwargs_from_cfg, sharding_from_cfg
from tests.helpers import REPO
from tests.helpers.distributed import LAUNCHER_VARS, free_port, read_results, without_launcher_variables
from tests.jobs.fsdp_job import MAX_ITER, Net, run


def _launch(out: Path, job: str, *args: Any) -> list[dict[str, Any]]:
    with without_launcher_variables():
        launch(run, 2, dist_url=f"tcp://127.0.0.1:{free_port()}", args=(str(out), job, *args))
    return read_results(out, 2)


def _model_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# ------------------------------------------------------------------ units, without processes
class _Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)  # 40 parameters
        self.stage1 = nn.Sequential(nn.Linear(8, 32), nn.Linear(32, 32))  # 288 + 1056
        self.stage2 = nn.Sequential(nn.Linear(32, 32))  # 1056


class _Detector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = _Backbone()
        self.head = nn.Linear(32, 2)  # 66


def test_units_by_size_are_innermost_first_and_the_model_is_last() -> None:
    plan = FSDPSharding(min_params=1000).plan(_Detector())
    # stage1.1 (1056) alone reaches 1000; stage1 then holds only 288 of its own: not a unit; stage2.0 (1056)
    assert plan == ["backbone.stage1.1", "backbone.stage2.0", ""]
    assert FSDPSharding(min_params=10**9).plan(_Detector()) == [""]  # small models: one unit


def test_units_by_module_name_or_class_name() -> None:
    assert FSDPSharding(units=["backbone.stage1", "head"]).plan(_Detector()) == ["backbone.stage1", "head", ""]
    by_class = FSDPSharding(units=["Sequential"]).plan(_Detector())
    assert by_class == ["backbone.stage1", "backbone.stage2", ""]


def test_containers_are_never_units() -> None:
    """A ModuleList has no forward for FSDP to hook: by size its parent takes its parameters; by name it is refused."""
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Linear(20, 20) for _ in range(3)])  # 420 parameters each, 1260 together
    assert FSDPSharding(min_params=1000).plan(model) == [""]
    assert FSDPSharding(min_params=400).plan(model) == ["blocks.0", "blocks.1", "blocks.2", ""]
    with pytest.raises(ValueError, match=r"FSDP unit 'blocks' is a ModuleList, .* name its elements \(blocks.0, ...\)"):
        FSDPSharding(units=["blocks"]).plan(model)


def test_a_unit_that_names_no_module_is_refused_with_the_names_to_use() -> None:
    with pytest.raises(ValueError, match=r"FSDP unit 'backbone.stage9' names no module of _Detector .*'backbone'"):
        FSDPSharding(units=["backbone.stage9"]).plan(_Detector())


def test_parameters_tied_across_units_are_refused_naming_them() -> None:
    model = _Detector()
    model.tied = model.backbone.stem  # the same Linear under two names: the model itself and backbone
    with pytest.raises(ValueError, match=r"FSDP: parameter 'tied.weight' is tied to one in 'backbone'"):
        FSDPSharding(units=["backbone"]).plan(model)
    assert FSDPSharding(units=["backbone.stage1"]).plan(model)  # both copies in the model's own unit: fine


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_params": 0}, "FSDP min_params must be a positive int, got 0"),
        ({"param_dtype": "bf16"}, "FSDP param_dtype='bf16': use one of"),
    ],
)
def test_bad_sharding_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FSDPSharding(**kwargs)


def test_fsdp1_strategy_is_refused_with_what_to_use() -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    with pytest.raises(ValueError, match=r"FSDPStrategy .* use Lightning's ModelParallelStrategy\("):
        check_sharding_options(FSDPStrategy())


def test_hooks_that_cannot_run_sharded_are_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match=r"^EMA cannot run with FSDP .*train with DDP"):
        check_hooks_for_sharding([hooks.IterationTimer(), hooks.EMA(0.9)])
    foreign = type("EvalHook", (), {"__module__": "detectron2.engine.hooks"})()
    with pytest.raises(ValueError, match=r"detectron2.engine.hooks.EvalHook runs forward passes .*d2lightning"):
        check_hooks_for_sharding([foreign])
    check_hooks_for_sharding([EvalHook(0, lambda: {}), hooks.IterationTimer()])  # d2lightning's own: fine


def test_config_keys_give_the_sharding() -> None:
    cfg = get_cfg()
    assert sharding_from_cfg(cfg) is None
    cfg.merge_from_list(["LIGHTNING.STRATEGY", "fsdp", "LIGHTNING.FSDP.UNITS", "['backbone']"])
    cfg.merge_from_list(["LIGHTNING.FSDP.MIN_PARAMS", "5", "LIGHTNING.FSDP.PARAM_DTYPE", "bfloat16"])
    assert sharding_from_cfg(cfg) == FSDPSharding(units=["backbone"], min_params=5, param_dtype="bfloat16")


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (["LIGHTNING.STRATEGY", "fsdp"], r"STRATEGY='fsdp' shards .* this run has one: .*--num-gpus N"),
        (["LIGHTNING.STRATEGY", "fsdp_cpu_offload"], r"STRATEGY='fsdp_cpu_offload': .* use 'fsdp'"),
    ],
)
def test_fsdp_settings_a_run_cannot_honour(opts: list[str], message: str) -> None:
    cfg = get_cfg()
    cfg.merge_from_list(opts)
    with pytest.raises(ValueError, match=message):
        lightning_kwargs_from_cfg(cfg)


# ------------------------------------------------------------------ 2 processes
@pytest.mark.slow
def test_simple_trainer_sharded_trains_as_ddp_and_resumes_exactly(tmp_path: Path) -> None:
    """lightning_kwargs={"strategy": ModelParallelStrategy(...)}: each rank holds half of the weights; the files are
    full detectron2 checkpoints; 10 iterations equal DDP's; 4 + resume to 10 equals 10 (dropout, AdamW)."""
    sharded = _launch(tmp_path / "fsdp", "simple_trainer", "fsdp", "")
    ddp = _launch(tmp_path / "ddp", "simple_trainer", "ddp", "")
    total = sharded[0]["numel"]
    assert [r["local_numel"] for r in sharded] == [total // 2 + total % 2, total // 2] or all(
        r["local_numel"] < total * 0.6 for r in sharded
    )
    assert [r["local_numel"] for r in ddp] == [total, total]
    run_dir = tmp_path / "fsdp" / "run"
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "last_checkpoint",
        "model_0000004.pth",
        "model_0000009.pth",
        "model_final.pth",
    ]
    final = torch.load(run_dir / "model_final.pth", map_location="cpu", weights_only=False)
    ddp_final = torch.load(tmp_path / "ddp" / "run" / "model_final.pth", map_location="cpu", weights_only=False)
    assert {k: (type(v), v.shape) for k, v in final["model"].items()} == {
        k: (type(v), v.shape) for k, v in ddp_final["model"].items()
    }
    assert all(type(v) is torch.Tensor for v in final["model"].values())  # full tensors, no DTensor
    assert _max_diff(final["model"], ddp_final["model"]) < 1e-6
    # the optimizer state is torch's own format, full-size, as an unsharded run writes it
    assert final["optimizer"]["param_groups"][0]["params"] == ddp_final["optimizer"]["param_groups"][0]["params"]
    for idx, state in final["optimizer"]["state"].items():
        assert state["exp_avg"].shape == ddp_final["optimizer"]["state"][idx]["exp_avg"].shape
    ranks = final["trainer"]["rng"]["ranks"]  # every rank's RNG states, though only rank 0 saves
    assert [sorted(r) for r in ranks] == [["numpy", "python", "torch"]] * 2

    resumed = _launch(tmp_path / "resumed", "simple_trainer", "fsdp", str(run_dir / "model_0000004.pth"))
    assert [r["start"] for r in resumed] == [5, 5]
    after = _model_state(tmp_path / "resumed" / "run" / "model_final.pth")
    assert _max_diff(after, final["model"]) == 0.0


@pytest.mark.slow
def test_plain_trainer_with_model_parallel_strategy_shards_d2lightning_module(tmp_path: Path) -> None:
    sharded = _launch(tmp_path / "fsdp", "plain_trainer", "fsdp")
    ddp = _launch(tmp_path / "ddp", "plain_trainer", "ddp")
    total = sum(p.numel() for p in Net().parameters())
    assert [r["global_step"] for r in sharded] == [MAX_ITER, MAX_ITER]
    assert all(r["local_numel"] < total * 0.6 for r in sharded)
    assert [r["local_numel"] for r in ddp] == [total, total]
    for r_fsdp, r_ddp in zip(sharded, ddp, strict=True):
        for key, values in r_ddp["weights"].items():
            assert r_fsdp["weights"][key] == pytest.approx(values, abs=1e-6), key


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_lightning_model_checkpoint_resumes_every_rank_exactly_with_fit_ckpt_path(
    tmp_path: Path, strategy: str
) -> None:
    """Lightning's ModelCheckpoint every 5 steps, then fit(ckpt_path=step 5) to 10: the weights of the straight 10 on
    every rank (the model has dropout, so every rank's RNG states must be in the file)."""
    r0, r1 = _launch(tmp_path, "lightning_checkpoint", strategy)
    assert r0["saved"] == ["epoch=0-step=10.ckpt", "epoch=0-step=5.ckpt"]
    for r in (r0, r1):
        for key, values in r["straight"].items():
            assert r["resumed"][key] == pytest.approx(values, abs=0.0), key


@pytest.mark.slow
def test_evaluation_best_checkpoint_and_writers_on_a_sharded_model(tmp_path: Path) -> None:
    """EvalHook + inference_on_dataset with 3 batches on rank 0 and 5 on rank 1 (the weights are gathered once, so the
    ranks do not wait for each other per batch), BestCheckpointer and PeriodicWriter on the main process only."""
    r0, r1 = _launch(tmp_path, "hooks_under_fsdp")
    assert (r0["iter"], r1["iter"], r0["test_batches"], r1["test_batches"]) == (6, 6, 3, 5)
    run_dir = tmp_path / "run"
    metrics = [json.loads(line) for line in (run_dir / "metrics.json").read_text().splitlines()]
    evaluations = [m for m in metrics if "score/neg_loss" in m]
    # the last evaluation runs in after_train (iteration 6, detectron2's numbering), and BestCheckpointer saves there
    assert [(m["iteration"], m["score/batches"]) for m in evaluations] == [(2, 8.0), (6, 8.0)]
    best = torch.load(run_dir / "model_best.pth", map_location="cpu", weights_only=False)
    assert best["iteration"] == 6
    assert all(type(v) is torch.Tensor for v in best["model"].values())
    assert len(best["trainer"]["rng"]["ranks"]) == 2
    # after the fit: a checkpointer's save of the shards is refused in one line; full_state_dict gathers them
    assert r0["save_after_fit"].startswith("Cannot save 'after_training': the model is sharded (FSDP)")
    assert "\n" not in r0["save_after_fit"] and not (run_dir / "after_training.pth").exists()
    assert r0["full_keys"] == r1["full_keys"] == sorted(Net().state_dict())
    assert r0["full_types"] == ["Tensor"]
    assert set(best["model"]) == set(Net().state_dict())


@pytest.mark.slow
def test_fsdp_mixed_precision_computes_in_bfloat16_and_keeps_float32_weights(tmp_path: Path) -> None:
    for r in _launch(tmp_path, "mixed_precision"):
        assert r["forward_dtypes"] == ["torch.bfloat16"]
        assert r["param_dtypes"] == ["torch.float32"]
        assert 0.0 < r["loss"] < 100.0
    final = _model_state(tmp_path / "run" / "model_final.pth")
    assert {str(v.dtype) for v in final.values()} == {"torch.float32"}


@pytest.mark.slow
def test_what_cannot_be_sharded_fails_at_once_in_one_line(tmp_path: Path) -> None:
    r0, r1 = _launch(tmp_path, "refusals")
    assert r0 == r1
    assert "tensor_parallel_size=2: d2lightning shards detectron2 models with FSDP only" in r0["tensor_parallel"]
    assert "wrapped in DistributedDataParallel (create_ddp_model): give the trainer the bare model" in r0["ddp_wrapped"]
    assert "grad_scaler=GradScaler" in r0["grad_scaler"] and "ShardedGradScaler" in r0["grad_scaler"]
    assert r0["sharded_grad_scaler"] == "trained"  # what the message proposes works
    assert r0["ema"].startswith("ValueError: EMA cannot run with FSDP")
    assert "parameter 'extra.weight' is tied to one in 'block1'" in r0["tied"]
    assert all("\n" not in message for message in r0.values())


# ------------------------------------------------------------------ the command line, built-in detector
_OPTS = [
    "SOLVER.MAX_ITER", "12",
    "SOLVER.CHECKPOINT_PERIOD", "6",
    "SOLVER.WARMUP_ITERS", "2",
    "TEST.EVAL_PERIOD", "0",
    "TEST.PRECISE_BN.NUM_ITER", "4",
    "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


def _cli(out: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    """``d2lightning <args> [OUTPUT_DIR out]`` in a subprocess (a YAML config's OUTPUT_DIR when ``out`` is given)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "d2lightning", *args, *(["OUTPUT_DIR", str(out)] if out is not None else [])]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)


def _last_total_loss(out: Path) -> float:
    lines = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    return [m["total_loss"] for m in lines if "total_loss" in m][-1]


@pytest.mark.slow
def test_cli_fsdp_on_the_built_in_detector(tmp_path: Path) -> None:
    """`d2lightning train --num-gpus 2 LIGHTNING.STRATEGY fsdp`: finishes with PreciseBN and the final evaluation;
    model_final.pth is a full state dict with DDP's keys and shapes and about DDP's loss; a run resumed from its
    mid-run checkpoint ends with the same weights; `d2lightning eval` loads it in one process."""
    train = ["train", "--config-file", "shapes_detector", "--num-gpus", "2"]
    fsdp = _cli(tmp_path / "fsdp", *train, "LIGHTNING.STRATEGY", "fsdp", *_OPTS)
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    assert "Final evaluation results (box AP, percent)" in fsdp.stdout
    ddp = _cli(tmp_path / "ddp", *train, *_OPTS)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    sharded, plain = (
        _model_state(tmp_path / "fsdp" / "model_final.pth"),
        _model_state(tmp_path / "ddp" / "model_final.pth"),
    )
    assert {k: v.shape for k, v in sharded.items()} == {k: v.shape for k, v in plain.items()}
    assert all(type(v) is torch.Tensor for v in sharded.values())
    loss_fsdp, loss_ddp = _last_total_loss(tmp_path / "fsdp"), _last_total_loss(tmp_path / "ddp")
    assert loss_fsdp == pytest.approx(loss_ddp, rel=0.03)

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "model_0000005.pth").write_bytes((tmp_path / "fsdp" / "model_0000005.pth").read_bytes())
    (resumed / "last_checkpoint").write_text("model_0000005.pth")
    again = _cli(resumed, *train, "--resume", "LIGHTNING.STRATEGY", "fsdp", *_OPTS)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Starting training from iteration 6" in (resumed / "log.txt").read_text()
    assert _max_diff(_model_state(resumed / "model_final.pth"), sharded) == 0.0

    evaluated = _cli(
        tmp_path / "eval",
        "eval",
        "--config-file",
        "shapes_detector",
        "MODEL.WEIGHTS",
        str(tmp_path / "fsdp" / "model_final.pth"),
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "copypaste: AP,AP50" in evaluated.stdout + evaluated.stderr


# ------------------------------------------------------------------ LazyConfig: train.fsdp
def _lazy_cfg(**fsdp: Any) -> Any:
    from d2lightning.config import LazyConfig
    from d2lightning.model_zoo import get_config_file

    cfg = LazyConfig.load(get_config_file("shapes_detector.py"))
    cfg.train.fsdp.update(fsdp)
    return cfg


def test_lazy_train_fsdp_disabled_by_default() -> None:
    from d2lightning.engine.recipes.lazy_training import _sharding

    assert _sharding(_lazy_cfg()) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"enabled": True}, r"train.fsdp shards the model over several processes, but this run has one"),
        ({"enabled": True, "min_param": 3}, r"train.fsdp.min_param: unknown key; train.fsdp takes enabled, units"),
    ],
)
def test_lazy_train_fsdp_a_run_cannot_honour(change: dict[str, Any], message: str) -> None:
    from d2lightning.config import ConfigError
    from d2lightning.engine.recipes.lazy_training import _sharding

    with pytest.raises(ConfigError, match=message):
        _sharding(_lazy_cfg(**change))


def test_lazy_train_fsdp_with_amp_is_refused() -> None:
    from d2lightning.config import ConfigError
    from d2lightning.engine.recipes.lazy_training import _sharding

    cfg = _lazy_cfg(enabled=True)
    cfg.train.amp.enabled = True
    with pytest.raises(ConfigError, match=r"train.fsdp with train.amp.enabled=True: .*param_dtype='bfloat16'"):
        _sharding(cfg)


@pytest.mark.slow
def test_cli_lazy_config_with_train_fsdp(tmp_path: Path) -> None:
    out = tmp_path / "lazy"
    proc = _cli(
        None,
        "train",
        "--config-file",
        "shapes_detector.py",
        "--num-gpus",
        "2",
        "train.fsdp.enabled=True",
        "train.max_iter=6",
        "train.checkpointer.period=3",
        "train.eval_period=0",
        f"train.output_dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FSDP over 2 processes" in (out / "log.txt").read_text()
    final = _model_state(out / "model_final.pth")
    assert all(type(v) is torch.Tensor for v in final.values())
    assert "copypaste: AP,AP50" in (out / "log.txt").read_text()

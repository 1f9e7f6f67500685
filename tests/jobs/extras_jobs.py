"""Module-level worker of the 2-process tests of Lightning's extras (spawned processes must import it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from tests.helpers.distributed import write_result
from tests.helpers.tiny_trainer import CountingStream, TinyModel, TinyTrainer, tiny_trainer_cfg


def counting_allreduce(state, bucket):  # type: ignore[no-untyped-def]
    """DDP's default all-reduce, counted (unannotated: DDP checks a hook's annotations, here strings)."""
    state.append(1)
    return default_hooks.allreduce_hook(None, bucket)  # type: ignore[arg-type]


def _config_error(out_dir: str, *opts: Any) -> str:
    try:
        TinyTrainer(tiny_trainer_cfg(out_dir, *opts))
    except ValueError as e:
        return str(e)
    return ""


def _lightning_wrapped_run() -> dict[str, Any]:
    """SimpleTrainer with 2 micro-batches; Lightning's DDPStrategy wraps the model (and gets a counting comm hook:
    Lightning registers ``ddp_comm_hook`` on CUDA only)."""
    from lightning.pytorch.callbacks import Callback

    from d2lightning.engine import SimpleTrainer
    from d2lightning.utils import comm

    class CountAllReduces(Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            trainer.strategy.model.register_comm_hook(calls, counting_allreduce)

    torch.manual_seed(0)
    model = TinyModel()
    stream = CountingStream(100 + comm.get_rank())
    trainer = SimpleTrainer(model, stream, torch.optim.SGD(model.parameters(), lr=0.1), accumulate_grad_batches=2)
    calls: list[int] = []
    trainer.register_hooks([CountAllReduces()])
    trainer.train(0, 3)
    return {"allreduces": len(calls), "fetches": stream.fetches, "weight": model.linear.weight.flatten().tolist()}


def train_tiny_ddp(out_dir: str) -> None:
    """TinyTrainer from a config with LIGHTNING.STRATEGY ddp, DEVICES 2, accumulation 2 and EMA, on 2 processes."""
    from d2lightning.utils import comm

    rank = comm.get_rank()
    run_dir = str(Path(out_dir) / f"run{rank}")
    cfg = tiny_trainer_cfg(
        run_dir,
        "LIGHTNING.STRATEGY", "ddp",
        "LIGHTNING.DEVICES", 2,
        "LIGHTNING.ACCUMULATE_GRAD_BATCHES", 2,
        "LIGHTNING.EMA.ENABLED", True,
        "LIGHTNING.EMA.DECAY", 0.5,
    )  # fmt: skip
    trainer = TinyTrainer(cfg)
    calls: list[int] = []
    trainer.model.register_comm_hook(calls, counting_allreduce)  # create_ddp_model wrapped it
    trainer.resume_or_load(resume=False)
    trainer.train()
    ema = next(h for h in trainer._hooks if type(h).__name__ == "EMA")
    result: dict[str, Any] = {
        "world": trainer.pl_trainer.world_size,
        "strategy": type(trainer.pl_trainer.strategy).__name__,
        "allreduces": len(calls),
        "fetches": trainer.data_loader.fetches,
        "weight": trainer.model.module.linear.weight.flatten().tolist(),
        "ema": ema.averaged_model.linear.weight.flatten().tolist(),
        "evaluated": [w.flatten().tolist() for w in TinyTrainer.evaluated],
        "lightning_wrapped": _lightning_wrapped_run(),
        "bad_strategy": _config_error(run_dir, "LIGHTNING.STRATEGY", "ddp_spawn"),
        "bad_devices": _config_error(run_dir, "LIGHTNING.DEVICES", 3),
    }
    write_result(out_dir, rank, result)

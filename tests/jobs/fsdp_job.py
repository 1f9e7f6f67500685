"""Module-level workers of the FSDP tests (2 CPU processes under ``launch``, gloo): spawned processes import them.

Each worker writes ``rank{r}.json`` (see :func:`tests.helpers.distributed.write_result`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tests.helpers.distributed import write_result
from tests.helpers.sharding import ShardProbe, local_numel

MAX_ITER = 10


class Net(nn.Module):
    """Two blocks (so that a size threshold makes them units) with dropout: resume needs every rank's RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64))
        self.block2 = nn.Sequential(nn.Linear(64, 32), nn.ReLU())
        self.head = nn.Linear(32, 1)
        self.drop = nn.Dropout(0.2)

    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": self.head(self.drop(self.block2(self.block1(batch)))).pow(2).mean()}


def rank_batches(rank: int) -> Any:
    """Every rank its own fixed batch (a stream with no position, so that a resume sees the same data)."""
    batch = torch.randn(8, 16, generator=torch.Generator().manual_seed(100 + rank))
    while True:
        yield batch


def simple_trainer(out_dir: str, strategy: str, resume_from: str) -> None:
    """SimpleTrainer.train with ``lightning_kwargs={"strategy": ...}``, AdamW, a checkpointer on rank 0 only (as
    detectron2's scripts register it), from scratch or resumed from ``resume_from``."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    from d2lightning.checkpoint import DetectionCheckpointer
    from d2lightning.engine import FSDPSharding, SimpleTrainer, hooks
    from d2lightning.utils import comm

    torch.manual_seed(comm.get_rank())  # ranks build different models, as detectron2 seeds them: rank 0's wins
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    trainer = SimpleTrainer(model, rank_batches(comm.get_rank()), optimizer)
    if strategy == "fsdp":
        trainer.lightning_kwargs = {"strategy": ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)}
        trainer.sharding = FSDPSharding(min_params=1000)
    run_dir = os.path.join(out_dir, "run")
    checkpointer = DetectionCheckpointer(model, run_dir, optimizer=optimizer, trainer=trainer)
    seen: dict[str, Any] = {}

    trainer.register_hooks(
        [
            ShardProbe(seen),
            hooks.PeriodicCheckpointer(checkpointer, 5) if comm.is_main_process() else None,
        ]
    )
    start = 0
    if resume_from:
        checkpointer.load(resume_from)
        start = trainer.iter + 1
    trainer.train(start, MAX_ITER)
    write_result(out_dir, comm.get_rank(), {"start": start, "iter": trainer.iter, **seen})


def _two_process_trainer(strategy: str, **kwargs: Any) -> Any:
    """A Lightning user's Trainer on this launched run's 2 CPU processes: ``ModelParallelStrategy`` for FSDP, else
    DDP; ``kwargs`` go to the Trainer."""
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy

    from d2lightning.engine.distributed.cluster import lightning_cluster_environment
    from d2lightning.engine.distributed.fsdp import fsdp_strategy

    plugin = lightning_cluster_environment()
    return pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=fsdp_strategy(2) if strategy == "fsdp" else DDPStrategy(broadcast_buffers=False),
        plugins=[plugin] if plugin is not None else None,
        max_steps=MAX_ITER,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def _full_weights(model: nn.Module) -> dict[str, list[float]]:
    """The model's full weights on every rank (a collective), as lists."""
    from d2lightning.utils.sharding import full_state_dict

    return {k: v.flatten().tolist() for k, v in full_state_dict(model).items()}


def plain_trainer(out_dir: str, strategy: str) -> None:
    """A Lightning user's Trainer with ``D2LightningModule`` and ``strategy=ModelParallelStrategy(...)`` (or DDP)."""
    import lightning.pytorch as pl

    from d2lightning.engine import D2LightningModule
    from d2lightning.utils import comm

    torch.manual_seed(comm.get_rank())
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    module = D2LightningModule(model, rank_batches(comm.get_rank()), optimizer)
    local: list[int] = []

    class Probe(pl.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            local.append(local_numel(model))

    trainer = _two_process_trainer(strategy, enable_checkpointing=False, callbacks=[Probe()])
    trainer.fit(module)
    write_result(
        out_dir,
        comm.get_rank(),
        {"global_step": trainer.global_step, "local_numel": local[-1], "weights": _full_weights(model)},
    )


def lightning_checkpoint(out_dir: str, strategy: str) -> None:
    """Lightning's own ModelCheckpoint on a sharded fit (its distributed checkpoint folder) or a DDP fit, and
    ``fit(ckpt_path=...)`` from it: 5 + 5 iterations end with the weights of 10 (dropout: every rank's RNG)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from d2lightning.engine import D2LightningModule
    from d2lightning.utils import comm

    def fit(ckpt_path: str | None, callbacks: list[Any]) -> dict[str, list[float]]:
        torch.manual_seed(0)
        model = Net()
        module = D2LightningModule(model, rank_batches(comm.get_rank()), torch.optim.AdamW(model.parameters()))
        trainer = _two_process_trainer(strategy, callbacks=callbacks, default_root_dir=out_dir)
        trainer.fit(module, ckpt_path=ckpt_path)
        return _full_weights(model)

    every5 = ModelCheckpoint(dirpath=os.path.join(out_dir, "ckpt"), every_n_train_steps=5, save_top_k=-1)
    straight = fit(None, [every5])
    saved = sorted(os.listdir(os.path.join(out_dir, "ckpt")))
    resumed = fit(os.path.join(out_dir, "ckpt", "epoch=0-step=5.ckpt"), [])
    write_result(out_dir, comm.get_rank(), {"saved": saved, "straight": straight, "resumed": resumed})


def hooks_under_fsdp(out_dir: str) -> None:
    """detectron2's standard hooks on a sharded model: an EvalHook running inference_on_dataset over a different
    number of batches on each rank (no collective per batch), a BestCheckpointer and a PeriodicWriter on the main
    process only, PreciseBN-free (the model has no BatchNorm)."""
    from d2lightning.checkpoint import DetectionCheckpointer
    from d2lightning.engine import SimpleTrainer, default_writers, hooks
    from d2lightning.engine.distributed.fsdp import fsdp_strategy
    from d2lightning.evaluation import DatasetEvaluator, inference_on_dataset
    from d2lightning.utils import comm
    from d2lightning.utils.sharding import full_state_dict

    class MeanOutput(DatasetEvaluator):
        def reset(self) -> None:
            self.values: list[float] = []

        def process(self, inputs: Any, outputs: Any) -> None:
            self.values.append(float(outputs["loss"]))

        def evaluate(self) -> dict[str, Any]:
            everyone = [v for values in comm.all_gather(self.values) for v in values]
            return {"score": {"neg_loss": -sum(everyone) / len(everyone), "batches": float(len(everyone))}}

    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    trainer = SimpleTrainer(model, rank_batches(comm.get_rank()), optimizer)
    trainer.lightning_kwargs = {"strategy": fsdp_strategy(2)}
    rank = comm.get_rank()
    test_batches = [torch.randn(4, 16, generator=torch.Generator().manual_seed(i)) for i in range(3 + 2 * rank)]

    def evaluate() -> dict[str, Any]:
        results = inference_on_dataset(model, test_batches, MeanOutput())
        return {**results, "progress": float(trainer.iter)}  # better at every evaluation: BestCheckpointer saves

    run_dir = os.path.join(out_dir, "run")
    checkpointer = DetectionCheckpointer(model, run_dir, trainer=trainer)
    main = comm.is_main_process()
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.EvalHook(3, evaluate),
            hooks.BestCheckpointer(3, checkpointer, "progress", "max") if main else None,
            hooks.PeriodicWriter(default_writers(run_dir, 6), period=3) if main else None,
        ]
    )
    trainer.train(0, 6)
    after: dict[str, Any] = {}
    if main:  # after the fit the model stays sharded: a save of its shards is refused
        try:
            checkpointer.save("after_training")
        except RuntimeError as e:
            after["save_after_fit"] = str(e)
    full = full_state_dict(model)  # every rank
    after["full_keys"] = sorted(full)
    after["full_types"] = sorted({type(v).__name__ for v in full.values()})
    write_result(out_dir, rank, {"iter": trainer.iter, "test_batches": len(test_batches), **after})


def mixed_precision(out_dir: str) -> None:
    """FSDP's own mixed precision (``param_dtype="bfloat16"``): units compute in bfloat16, the sharded weights,
    gradients and the checkpoint stay float32."""
    from d2lightning.checkpoint import DetectionCheckpointer
    from d2lightning.engine import FSDPSharding, HookBase, SimpleTrainer, hooks
    from d2lightning.engine.distributed.fsdp import fsdp_strategy
    from d2lightning.utils import comm

    torch.manual_seed(0)
    model = Net()
    seen: dict[str, Any] = {"forward_dtypes": set()}
    model.block1[0].register_forward_hook(lambda m, args, out: seen["forward_dtypes"].add(str(out.dtype)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = SimpleTrainer(model, rank_batches(comm.get_rank()), optimizer)
    trainer.lightning_kwargs = {"strategy": fsdp_strategy(2)}
    trainer.sharding = FSDPSharding(param_dtype="bfloat16", reduce_dtype="float32")

    class Dtypes(HookBase):
        def after_step(self) -> None:
            seen["param_dtypes"] = sorted({str(p.dtype) for p in self.trainer.model.parameters()})
            seen["loss"] = self.trainer.storage.history("total_loss").latest()

    checkpointer = DetectionCheckpointer(model, os.path.join(out_dir, "run"), trainer=trainer)
    trainer.register_hooks([Dtypes(), hooks.PeriodicCheckpointer(checkpointer, 4) if comm.is_main_process() else None])
    trainer.train(0, 4)
    write_result(out_dir, comm.get_rank(), {**seen, "forward_dtypes": sorted(seen["forward_dtypes"])})


def refusals(out_dir: str) -> None:
    """What cannot be sharded: each fit fails at once with its one line (every rank)."""
    import lightning.pytorch as pl  # noqa: F401
    from lightning.pytorch.strategies import ModelParallelStrategy

    from d2lightning.engine import AMPTrainer, FSDPSharding, SimpleTrainer, create_ddp_model, hooks
    from d2lightning.utils import comm

    found: dict[str, str] = {}

    def attempt(name: str, trainer: Any, strategy: Any) -> None:
        trainer.lightning_kwargs = {"strategy": strategy}
        try:
            trainer.train(0, 2)
        except Exception as e:
            found[name] = f"{type(e).__name__}: {e}"
        else:
            found[name] = "trained"

    def fsdp() -> Any:
        return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)

    def fresh(cls: Any = SimpleTrainer, wrap: bool = False, **kwargs: Any) -> Any:
        torch.manual_seed(0)
        model = Net()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        return cls(create_ddp_model(model) if wrap else model, rank_batches(comm.get_rank()), optimizer, **kwargs)

    attempt("tensor_parallel", fresh(), ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2))
    attempt("ddp_wrapped", fresh(wrap=True), fsdp())
    attempt("grad_scaler", fresh(AMPTrainer, grad_scaler=torch.amp.GradScaler("cpu")), fsdp())
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    attempt("sharded_grad_scaler", fresh(AMPTrainer, grad_scaler=ShardedGradScaler(device="cpu")), fsdp())
    ema = fresh()
    ema.register_hooks([hooks.EMA(0.9)])
    attempt("ema", ema, fsdp())
    tied = fresh()
    tied.model.extra = tied.model.block1[0]  # the same Linear in two places: block1 and the model itself
    tied.sharding = FSDPSharding(units=["block1"])
    attempt("tied", tied, fsdp())
    write_result(out_dir, comm.get_rank(), found)


def run(out_dir: str, job: str, *args: Any) -> None:
    """Dispatch by name (the spawned workers get plain arguments)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    jobs = {
        "simple_trainer": simple_trainer,
        "plain_trainer": plain_trainer,
        "lightning_checkpoint": lightning_checkpoint,
        "mixed_precision": mixed_precision,
        "hooks_under_fsdp": hooks_under_fsdp,
        "refusals": refusals,
    }
    jobs[job](out_dir, *args)

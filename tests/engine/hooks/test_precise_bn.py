"""update_bn_stats and the PreciseBN hook: true population statistics, the disabled case, DDP agreement."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from d2lightning.engine import hooks
from d2lightning.layers import get_bn_modules, update_bn_stats
from d2lightning.utils.events import get_event_storage
from tests.helpers.training import SimpleModel, run

MODES = ["simple", "lightning"]
PRECISE_BN_LOG = "Running precise-BN for 3 iterations...  Note that this could produce different statistics every time."
DISABLED_LOG = "PreciseBN is disabled because model does not contain BN layers in training mode."

# Two batches of different sizes. Channel 0 holds 1, 3, 5, 7, 9: mean 5, population variance
# (16 + 4 + 0 + 4 + 16) / 5 = 8. Channel 1 holds 2, 4, 0, 2, 4: mean 12 / 5 = 2.4, mean of squares
# 40 / 5 = 8, variance 8 - 2.4^2 = 2.24. (Averaging the two batch means instead would give 4.5 for channel 0.)
BATCHES = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0, 0.0], [7.0, 2.0], [9.0, 4.0]])]
EXPECTED_MEAN = [5.0, 2.4]
EXPECTED_VAR = [8.0, 2.24]


def assert_stats(bn: nn.Module, mean: list[float], var: list[float]) -> None:
    torch.testing.assert_close(bn.running_mean, torch.tensor(mean), rtol=0, atol=1e-6)
    torch.testing.assert_close(bn.running_var, torch.tensor(var), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- update_bn_stats
def test_update_bn_stats_sets_the_population_statistics() -> None:
    bn = nn.BatchNorm1d(2, momentum=0.9)
    bn.num_batches_tracked.fill_(7)
    update_bn_stats(bn, iter(BATCHES), num_iters=2)
    assert_stats(bn, EXPECTED_MEAN, EXPECTED_VAR)
    assert bn.momentum == 0.9
    assert bn.num_batches_tracked.item() == 7
    assert bn.training


def test_update_bn_stats_counts_spatial_positions_as_samples() -> None:
    bn = nn.BatchNorm2d(2, momentum=0.5)
    # channel 0 of batch 1 is all 1 (4 values), of batch 2 all 4 (8 values): mean (4 + 32) / 12 = 3,
    # variance (4 * 4 + 8 * 1) / 12 = 2. Channel 1 is 0 everywhere except one 6 in batch 2: mean 0.5,
    # variance 36 / 12 - 0.25 = 2.75.
    b1 = torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2)], dim=1)  # (1, 2, 2, 2)
    b2 = torch.stack([torch.full((2, 2, 2), 4.0), torch.zeros(2, 2, 2)], dim=1)  # (2, 2, 2, 2)
    b2[1, 1, 0, 0] = 6.0
    update_bn_stats(bn, iter([b1, b2]), num_iters=2)
    assert_stats(bn, [3.0, 0.5], [2.0, 2.75])


def test_update_bn_stats_reads_only_num_iters_batches() -> None:
    consumed: list[int] = []

    def loader() -> Iterator[torch.Tensor]:
        for i, b in enumerate([*BATCHES, torch.full((4, 2), 100.0)]):
            consumed.append(i)
            yield b

    update_bn_stats(nn.BatchNorm1d(2), loader(), num_iters=2)
    assert consumed == [0, 1]


def test_update_bn_stats_errors() -> None:
    with pytest.raises(
        RuntimeError, match=re.escape("meant to run for num_iters=3 batches, but the data loader stopped after 2")
    ):
        update_bn_stats(nn.BatchNorm1d(2), iter(BATCHES), num_iters=3)
    with pytest.raises(ValueError, match="num_iters must be an int >= 1, got 0"):
        update_bn_stats(nn.BatchNorm1d(2), iter(BATCHES), num_iters=0)
    with pytest.raises(ValueError, match="progress must be None or 'tqdm', got 'bar'"):
        update_bn_stats(nn.BatchNorm1d(2), iter(BATCHES), num_iters=1, progress="bar")
    bn = nn.BatchNorm1d(2)
    with pytest.raises(RuntimeError, match="BN layer '1' ran twice in one forward"):
        update_bn_stats(nn.Sequential(nn.Identity(), bn, bn), iter(BATCHES), num_iters=1)
    assert bn.momentum == 0.1  # restored after the failure
    assert_stats(bn, [0.0, 0.0], [1.0, 1.0])  # untouched


def test_get_bn_modules_lists_training_bn_layers_with_running_stats() -> None:
    a, b, c, d = nn.BatchNorm1d(2), nn.BatchNorm2d(2), nn.BatchNorm1d(2, track_running_stats=False), nn.BatchNorm3d(2)
    d.eval()
    assert get_bn_modules(nn.Sequential(a, nn.Linear(2, 2), b, c, d)) == [a, b]


# ---------------------------------------------------------------- the hook
class BNModel(nn.Module):
    """Linear then BatchNorm with a large momentum (its EMA is far from the true statistics)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2, momentum=0.9)
        self.forwards = 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        get_event_storage().put_scalar("forwards", 1.0)  # detectron2 models use the storage in training
        self.forwards += 1
        return {"loss": self.bn(self.linear(x)).pow(2).mean() + self.linear.weight.sum()}


def bn_batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(n, 3, generator=g) * 4 for n in (2, 5, 3, 6, 4, 2)]


class RecordingLoader:
    """An iterable over ``bn_batches()`` recording which batches were taken (only one ``iter()`` allowed)."""

    def __init__(self) -> None:
        self.taken: list[int] = []
        self.iters = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        self.iters += 1
        for i, b in enumerate(bn_batches()):
            self.taken.append(i)
            yield b


@pytest.mark.parametrize("mode", MODES)
def test_hook_sets_true_statistics_after_the_last_iteration(mode: str, caplog: Any) -> None:
    model = BNModel()
    loader = RecordingLoader()
    caplog.set_level(logging.INFO, logger="d2lightning.engine.hooks.precise_bn")
    trainer = run(mode, [hooks.PreciseBN(0, model, loader, 3)], 0, 4, model=model)

    assert loader.taken == [0, 1, 2]
    with torch.no_grad():
        inputs = model.linear(torch.cat(bn_batches()[:3]))  # final weights: PreciseBN ran after the last step
    assert_stats(model.bn, inputs.mean(0).tolist(), inputs.var(0, unbiased=False).tolist())
    assert [r.getMessage() for r in caplog.records if r.name.startswith("d2lightning")] == [PRECISE_BN_LOG]
    # the 3 precise-BN forwards put their scalars into a throw-away storage
    assert len(trainer.storage.history("forwards").values()) == 4
    assert model.forwards == 7


@pytest.mark.parametrize("mode", MODES)
def test_hook_period_and_persistent_iterator(mode: str) -> None:
    model = BNModel()
    loader = RecordingLoader()
    run(mode, [hooks.PreciseBN(2, model, loader, 2)], 0, 5, model=model)
    # after iterations 1 and 3 (period) and 4 (the last), each time the next two batches of one iterator
    assert loader.taken == [0, 1, 2, 3, 4, 5]
    assert loader.iters == 1


def test_hook_after_an_early_stop_runs_the_final_update_once() -> None:
    def stop_at_2(trainer: Any) -> None:
        if trainer.iter == 2:
            trainer.pl_trainer.should_stop = True

    model = BNModel()
    loader = RecordingLoader()
    trainer = run(
        "lightning",
        [hooks.PreciseBN(0, model, loader, 2), hooks.CallbackHook(after_step=stop_at_2)],
        0,
        50,
        model=model,
    )
    assert trainer.max_iter == 3
    assert loader.taken == [0, 1]  # once, in after_train

    model = BNModel()
    loader = RecordingLoader()
    run(
        "lightning",
        [hooks.PreciseBN(3, model, loader, 2), hooks.CallbackHook(after_step=stop_at_2)],
        0,
        50,
        model=model,
    )
    assert loader.taken == [0, 1]  # already ran after iteration 2: not again in after_train


@pytest.mark.parametrize("mode", MODES)
def test_hook_without_training_bn_layers_is_disabled(mode: str, caplog: Any) -> None:
    class Untouchable:
        def __iter__(self) -> Iterator[Any]:
            raise AssertionError("the loader of a disabled PreciseBN must not be used")

    caplog.set_level(logging.INFO, logger="d2lightning.engine.hooks.precise_bn")
    hook = hooks.PreciseBN(1, SimpleModel(), Untouchable(), 5)
    eval_bn = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).eval()
    hooks.PreciseBN(1, eval_bn, Untouchable(), 5)
    run(mode, [hook], 0, 3)
    hook.update_stats()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("d2lightning")] == [
        DISABLED_LOG,
        DISABLED_LOG,
    ]  # once per hook


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((-1, nn.BatchNorm1d(2), [], 1), ValueError, "PreciseBN period must be an int >= 0, got -1"),
        ((1, nn.BatchNorm1d(2), [], 0), ValueError, "PreciseBN num_iter must be an int >= 1, got 0"),
        ((1, "model", [], 1), TypeError, "PreciseBN model must be a torch.nn.Module, got str"),
        ((1, nn.BatchNorm1d(2), 5, 1), TypeError, "PreciseBN data_loader must be iterable, got int"),
    ],
)
def test_hook_arguments_are_validated(args: tuple, error: type, match: str) -> None:
    with pytest.raises(error, match=re.escape(match)):
        hooks.PreciseBN(*args)


# ---------------------------------------------------------------- DDP
# Rank 0 sees BATCHES; rank 1 sees [[11, 2], [13, 4]] and [[15, 6], [17, 0], [19, 2]]. Over all 10 rows,
# channel 0 holds 1, 3, ..., 19: mean 10, variance 2 * (81 + 49 + 25 + 9 + 1) / 10 = 33. Channel 1 holds
# 2, 4, 0, 2, 4, 2, 4, 6, 0, 2: mean 26 / 10 = 2.6, mean of squares 100 / 10 = 10, variance 10 - 2.6^2 = 3.24.
RANK1_BATCHES = [torch.tensor([[11.0, 2.0], [13.0, 4.0]]), torch.tensor([[15.0, 6.0], [17.0, 0.0], [19.0, 2.0]])]


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(rank)  # different initial buffers on each rank
        model = nn.Sequential(nn.BatchNorm1d(2, momentum=0.3))
        model[0].running_mean.uniform_()
        hook = hooks.PreciseBN(0, model, BATCHES if rank == 0 else RANK1_BATCHES, 2)
        hook.update_stats()
        result: dict[str, Any] = {"mean": model[0].running_mean.tolist(), "var": model[0].running_var.tolist()}
        # a loader too short on rank 1 only: both ranks raise, nobody hangs
        try:
            update_bn_stats(model, iter(BATCHES if rank == 0 else RANK1_BATCHES[:1]), num_iters=2)
        except RuntimeError as e:
            result["error"] = str(e)
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_end_with_identical_statistics_over_all_data(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for result in results:
        assert result["mean"] == pytest.approx([10.0, 2.6], abs=1e-5)
        assert result["var"] == pytest.approx([33.0, 3.24], abs=1e-5)
    assert results[0]["mean"] == results[1]["mean"]
    assert results[0]["var"] == results[1]["var"]
    assert "the data loader of another rank stopped early" in results[0]["error"]
    assert "the data loader stopped after 1 batches" in results[1]["error"]

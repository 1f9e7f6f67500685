"""detectron2's own Mask R-CNN trains sharded (FSDP2 on Lightning's ``ModelParallelStrategy``) as under DDP, on 2 CPU
processes (gloo), against a real detectron2 (skipped without it).

The model is detectron2's ``GeneralizedRCNN`` from ``build_model`` and the model-zoo Mask R-CNN R50-FPN config shrunk
to ResNet-18 (``tests/jobs/d2_fsdp_job.py``): its stem and ``res2`` are frozen (``FREEZE_AT`` 2) and every norm is a
``FrozenBatchNorm2d``, whose statistics are buffers. Each rank builds it from its own seed and trains on its own fixed
synthetic batch (boxes, classes, ``BitMasks``) with detectron2's ``build_optimizer``; d2lightning broadcasts rank 0's
weights under FSDP as DDP does, so both runs start alike. After ``MAX_ITER`` iterations the sharded run has DDP's
weights, and its ``model_final.pth`` is a full detectron2 checkpoint that detectron2's own ``DetectionCheckpointer``
loads into a model in one process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from d2lightning.engine import FSDPSharding
from d2lightning.engine.launch import launch
from tests.helpers.detectron2_runs import DETECTRON2_MARKS
from tests.helpers.distributed import free_port, read_results, without_launcher_variables
from tests.jobs.d2_fsdp_job import MAX_ITER, UNITS, rank_batch, run, small_mask_rcnn

pytestmark = DETECTRON2_MARKS

TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def _launch(out: Path, job: str, *args: Any) -> list[dict[str, Any]]:
    with without_launcher_variables():
        launch(run, 2, dist_url=f"tcp://127.0.0.1:{free_port()}", args=(str(out), job, *args))
    return read_results(out, 2)


def _checkpoint(out: Path) -> dict[str, Any]:
    return torch.load(out / "run" / "model_final.pth", map_location="cpu", weights_only=False)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The sharded run and the DDP run: every rank's findings and the main process's ``model_final.pth``."""
    root = tmp_path_factory.mktemp("d2_fsdp")
    found: dict[str, Any] = {}
    for strategy in ("fsdp", "ddp"):
        results = _launch(root / strategy, "mask_rcnn", strategy)
        found[strategy] = {"ranks": results, "final": _checkpoint(root / strategy), "dir": root / strategy}
    return found


# ------------------------------------------------------------------ the model, without processes
def test_the_units_are_modules_of_detectron2s_mask_rcnn_and_its_frozen_norms_are_buffers() -> None:
    from detectron2.layers import FrozenBatchNorm2d

    model = small_mask_rcnn(seed=0)
    assert type(model).__name__ == "GeneralizedRCNN"
    assert FSDPSharding(units=UNITS).plan(model) == [*UNITS, ""]  # each names a module; no weight tied across them
    res2 = model.get_submodule("backbone.bottom_up.res2")
    assert not any(p.requires_grad for p in res2.parameters())  # a unit with frozen weights only
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen
    assert all(not list(m.parameters(recurse=False)) and len(list(m.buffers())) == 4 for m in frozen)


# ------------------------------------------------------------------ 2 processes
@pytest.mark.slow
def test_sharded_mask_rcnn_trains_as_ddp_from_rank_0s_weights(runs: dict[str, Any]) -> None:
    """Each rank holds about half of the weights; the losses and the final weights are DDP's; the frozen weights are
    rank 0's initial ones (the ranks built different models), untouched by the steps."""
    sharded, ddp = runs["fsdp"]["ranks"], runs["ddp"]["ranks"]
    assert sharded[0]["initial"] != sharded[1]["initial"]  # rank 1 built another model: the broadcast is needed
    assert [r["initial"] for r in sharded] == [r["initial"] for r in ddp]
    assert [r["iter"] for r in sharded + ddp] == [MAX_ITER] * 4
    assert [r["units"] for r in sharded] == [sorted(["", *UNITS])] * 2
    assert [r["units"] for r in ddp] == [[], []]
    total = sharded[0]["numel"]
    assert sum(r["local_numel"] for r in sharded) == total
    assert all(r["local_numel"] < total * 0.6 for r in sharded)
    assert [r["local_numel"] for r in ddp] == [total, total]
    assert len(sharded[0]["losses"]) == MAX_ITER
    assert sharded[0]["losses"] == pytest.approx(ddp[0]["losses"], rel=1e-5)

    weights, ddp_weights = runs["fsdp"]["final"]["model"], runs["ddp"]["final"]["model"]
    for key, value in ddp_weights.items():
        torch.testing.assert_close(weights[key], value, **TOLERANCE, msg=lambda m, key=key: f"{key}: {m}")
    print(f"max |FSDP - DDP| over the weights after {MAX_ITER} iterations: {_max_diff(weights, ddp_weights):.3g}")

    first = small_mask_rcnn(seed=0)
    initial = first.state_dict()
    trainable = [n for n, p in first.named_parameters() if p.requires_grad]
    frozen = [n for n, p in first.named_parameters() if not p.requires_grad]
    assert frozen and all(torch.equal(weights[n], initial[n]) for n in frozen)
    other = small_mask_rcnn(seed=1).state_dict()
    assert not any(torch.equal(weights[n], other[n]) for n in frozen)
    assert all(not torch.equal(weights[n], initial[n]) for n in trainable if n.startswith("roi_heads."))
    norms = [n for n in initial if ".norm." in n]  # FrozenBatchNorm2d's buffers, as built
    assert norms and all(torch.equal(weights[n], initial[n]) for n in norms)


@pytest.mark.slow
def test_the_main_process_writes_a_full_detectron2_checkpoint_with_ddps_keys(runs: dict[str, Any]) -> None:
    final, ddp_final = runs["fsdp"]["final"], runs["ddp"]["final"]
    assert sorted(p.name for p in (runs["fsdp"]["dir"] / "run").iterdir()) == sorted(
        p.name for p in (runs["ddp"]["dir"] / "run").iterdir()
    )
    assert {k: (type(v), v.shape, v.dtype) for k, v in final["model"].items()} == {
        k: (type(v), v.shape, v.dtype) for k, v in ddp_final["model"].items()
    }
    assert all(type(v) is torch.Tensor for v in final["model"].values())  # full tensors, no DTensor
    assert final["iteration"] == ddp_final["iteration"] == MAX_ITER - 1
    # detectron2's build_optimizer: its groups and its SGD momentum buffers, full-size, as an unsharded run has them
    groups = [{k: v for k, v in g.items() if k != "params"} for g in final["optimizer"]["param_groups"]]
    assert groups == [{k: v for k, v in g.items() if k != "params"} for g in ddp_final["optimizer"]["param_groups"]]
    assert set(final["optimizer"]["state"]) == set(ddp_final["optimizer"]["state"])
    for idx, state in final["optimizer"]["state"].items():
        buffer = state["momentum_buffer"]
        assert type(buffer) is torch.Tensor
        assert buffer.shape == ddp_final["optimizer"]["state"][idx]["momentum_buffer"].shape


@pytest.mark.slow
def test_detectron2s_checkpointer_loads_the_sharded_runs_checkpoint_in_one_process(runs: dict[str, Any]) -> None:
    from detectron2.checkpoint import DetectionCheckpointer as D2Checkpointer

    model = small_mask_rcnn(seed=7)  # another initialization: every tensor must come from the file
    left = D2Checkpointer(model).load(str(runs["fsdp"]["dir"] / "run" / "model_final.pth"))
    assert sorted(left) == ["iteration", "optimizer", "trainer"]  # what the model did not take
    saved = runs["fsdp"]["final"]["model"]
    state = model.state_dict()
    assert set(state) == set(saved)
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    model.eval()
    with torch.no_grad():
        outputs = model([{k: v for k, v in d.items() if k != "instances"} for d in rank_batch(0)])
    assert len(outputs) == 2
    assert {"pred_boxes", "scores", "pred_classes", "pred_masks"} <= set(outputs[0]["instances"].get_fields())

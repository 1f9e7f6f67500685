"""d2lightning.engine.distributed.ddp.create_ddp_model, detectron2's ``create_ddp_model``, on 1 and 2 gloo processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from d2lightning.engine.distributed.ddp import create_ddp_model
from d2lightning.engine.launch import launch
from d2lightning.utils import comm
from tests.helpers.distributed import read_results, without_launcher_variables, write_result

# Rank 0 feeds 0.1 and rank 1 feeds 0.2 to y = w * x: the averaged gradient in float32, and after
# fp16_compress_hook (each rank's 0.1 / 0.2 cast to float16, divided by 2, summed in float16).
GRAD_FP32 = 0.15000000596046448
GRAD_FP16 = 0.14990234375


def test_single_process_returns_the_model() -> None:
    model = torch.nn.Linear(2, 1)
    assert create_ddp_model(model) is model
    assert create_ddp_model(model, fp16_compression=True, broadcast_buffers=False) is model


def test_rejects_non_modules() -> None:
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, got function"):
        create_ddp_model(lambda x: x)  # type: ignore[arg-type]


def ddp_worker(out_dir: str) -> None:
    rank = comm.get_rank()
    result: dict[str, Any] = {}
    for fp16 in (False, True):
        model = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.constant_(model.weight, float(rank + 1))  # DDP must broadcast rank 0's 1.0
        ddp = create_ddp_model(model, fp16_compression=fp16, broadcast_buffers=False)
        ddp(torch.tensor([[0.1 if rank == 0 else 0.2]])).sum().backward()
        assert isinstance(ddp, DistributedDataParallel)
        result["fp16" if fp16 else "fp32"] = {
            "weight": model.weight.item(),
            "grad": model.weight.grad.item(),  # type: ignore[union-attr]
            "device_ids": ddp.device_ids,
            "broadcast_buffers": ddp.broadcast_buffers,
            "hook": ddp._get_ddp_logging_data().get("comm_hook"),
        }
    write_result(out_dir, rank, result)


def test_two_processes_wrap_in_ddp(tmp_path: Path) -> None:
    with without_launcher_variables():
        launch(ddp_worker, 2, dist_url="auto", args=(str(tmp_path),))
    for result in read_results(tmp_path, 2):
        assert result["fp32"] == {
            "weight": 1.0,
            "grad": GRAD_FP32,
            "device_ids": None,
            "broadcast_buffers": False,
            "hook": None,
        }
        assert result["fp16"] == {
            "weight": 1.0,
            "grad": GRAD_FP16,
            "device_ids": None,
            "broadcast_buffers": False,
            "hook": "fp16_compress_hook",
        }

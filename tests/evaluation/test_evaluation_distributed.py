"""COCOEvaluator under 2-process CPU (gloo) DDP: predictions are gathered to rank 0.

Each rank runs ``inference_on_dataset`` on its own shard (rank 0: image 1, rank 1: image 2, as detectron2's
``InferenceSampler`` would split them). Rank 0 must report the AP of the *whole* dataset, which is the
hand-computed result of ``tests/test_evaluation_coco.py`` (AP = (660/1010 + 1) / 2, AP50 = 100, ...); rank 1
must get ``{}``. With only rank 0's shard the AP would differ (image 2's dog would count as missed).
"""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers.distributed import free_port

CLASSES = ["cat", "dog"]
GT = [
    {
        "image_id": 1,
        "height": 200,
        "width": 200,
        "annotations": [
            {"bbox": [0, 0, 40, 40], "bbox_mode": 0, "category_id": 0},
            {"bbox": [100, 100, 150, 150], "bbox_mode": 0, "category_id": 0},
        ],
    },
    {
        "image_id": 2,
        "height": 200,
        "width": 200,
        "annotations": [{"bbox": [10, 10, 110, 110], "bbox_mode": 0, "category_id": 1}],
    },
]
BOXES = {
    1: ([[0, 0, 40, 40], [100, 100, 150, 180]], [0.9, 0.8], [0, 0]),
    2: ([[10, 10, 110, 110]], [0.7], [1]),
}


def _model(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    outputs = []
    for item in batch:
        boxes, scores, classes = BOXES[item["image_id"]]
        outputs.append(
            {
                "instances": SimpleNamespace(
                    pred_boxes=SimpleNamespace(tensor=torch.tensor(boxes, dtype=torch.float32)),
                    scores=torch.tensor(scores),
                    pred_classes=torch.tensor(classes),
                )
            }
        )
    return outputs


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    from d2lightning.evaluation import COCOEvaluator, inference_on_dataset
    from d2lightning.utils import comm

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        evaluator = COCOEvaluator("toy", gt_dicts=GT, class_names=CLASSES)
        shard = [[{"image_id": rank + 1}]]
        results = inference_on_dataset(_model, shard, evaluator)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)  # NaN is written as NaN and read back by json
        dist.barrier()  # the barrier EvalHook adds after evaluation
    finally:
        # comm caches the gloo group (the default group itself here); drop that reference before destroying
        # the group, or the group is torn down at interpreter exit, which aborted ~1 run in 25 (SIGABRT).
        comm._reset_local_process_group()
        dist.destroy_process_group()


def test_rank0_gets_full_dataset_ap_and_rank1_gets_empty(tmp_path: Any) -> None:
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank1 == {}
    bbox = rank0["bbox"]
    assert list(bbox) == ["AP", "AP50", "AP75", "APs", "APm", "APl", "AP-cat", "AP-dog"]
    assert math.isclose(bbox["AP"], (660 / 1010 + 1) / 2 * 100, abs_tol=1e-6)
    assert math.isclose(bbox["AP50"], 100.0, abs_tol=1e-6)
    assert math.isclose(bbox["AP-dog"], 100.0, abs_tol=1e-6)  # image 2 came from rank 1
    assert math.isclose(bbox["AP-cat"], 660 / 1010 * 100, abs_tol=1e-6)
    assert math.isnan(bbox["APs"])

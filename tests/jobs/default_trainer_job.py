"""Worker of the 2-process DefaultTrainer test (spawned processes must import it): the demo, briefly.

Each rank trains the built-in detector for ``MAX_ITER`` iterations with ``DefaultTrainer`` (COCO evaluator,
periodic evaluation), counts the evaluations it took part in, and writes what it saw to ``rank{R}.json``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from tests.helpers import DEMO_CONFIG
from tests.helpers.distributed import write_result

DEMO = str(DEMO_CONFIG)
OVERRIDES = [
    "SOLVER.MAX_ITER",
    "10",
    "SOLVER.CHECKPOINT_PERIOD",
    "5",
    "TEST.EVAL_PERIOD",
    "5",
    "TEST.PRECISE_BN.NUM_ITER",
    "4",
    "SOLVER.IMS_PER_BATCH",
    "8",
]


def train_demo(out_dir: str) -> None:
    """DefaultTrainer on this rank; records evaluations, results, weights and (rank 0) the files written."""
    from d2lightning.config import apply_overrides, get_cfg
    from d2lightning.engine import DefaultTrainer, default_setup
    from d2lightning.evaluation import COCOEvaluator
    from d2lightning.utils import comm

    cfg = get_cfg()
    cfg.merge_from_file(DEMO)
    apply_overrides(cfg, [*OVERRIDES, "OUTPUT_DIR", os.path.join(out_dir, "run")])
    cfg.freeze()
    default_setup(cfg, argparse.Namespace(config_file=DEMO, opts=[], resume=False, eval_only=False))
    evaluations: list[int] = []

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg: Any, dataset_name: str) -> Any:
            return COCOEvaluator(dataset_name, output_dir=os.path.join(cfg.OUTPUT_DIR, "inference"))

        @classmethod
        def test(cls, cfg: Any, model: Any, evaluators: Any = None) -> Any:
            evaluations.append(comm.get_rank())
            return super().test(cfg, model, evaluators)

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    run = Path(cfg.OUTPUT_DIR)
    write_result(
        out_dir,
        comm.get_rank(),
        {
            "evaluations": len(evaluations),
            "iter": trainer.iter,
            "results": results,
            "weight_sum": float(sum(p.detach().double().sum() for p in model.parameters())),
            "world_size": comm.get_world_size(),
            "files": sorted(p.name for p in run.iterdir() if not p.name.startswith("events.out"))
            if comm.is_main_process()
            else [],
        },
    )

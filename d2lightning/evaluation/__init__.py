"""Evaluation with detectron2's names (``detectron2.evaluation``).

``DatasetEvaluator`` / ``DatasetEvaluators`` / ``inference_on_dataset`` / ``inference_context`` run a
model over a test loader; ``COCOEvaluator`` computes box AP with the official COCO API; ``print_csv_format``,
``verify_results`` and ``flatten_results_dict`` handle the ``{task: {metric: score}}`` results.
"""

from d2lightning.evaluation.coco_evaluation import COCOEvaluator
from d2lightning.evaluation.evaluator import (
    DatasetEvaluator,
    DatasetEvaluators,
    inference_context,
    inference_on_dataset,
)
from d2lightning.evaluation.testing import flatten_results_dict, print_csv_format, verify_results

__all__ = [
    "COCOEvaluator",
    "DatasetEvaluator",
    "DatasetEvaluators",
    "flatten_results_dict",
    "inference_context",
    "inference_on_dataset",
    "print_csv_format",
    "verify_results",
]

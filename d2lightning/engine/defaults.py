"""Common training-script boilerplate with detectron2's names (``detectron2.engine.defaults``).

``default_setup`` and ``default_writers`` live here; ``default_argument_parser`` (defined in
``d2lightning._argument_parser``, which imports neither torch nor Lightning, so that the command line answers
``--help`` at once), ``DefaultTrainer`` and ``DefaultPredictor`` (in their own modules) are importable from here
too, as in detectron2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from d2lightning._argument_parser import default_argument_parser
from d2lightning.utils import comm
from d2lightning.utils.env import collect_env_info, seed_all_rng
from d2lightning.utils.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardXWriter
from d2lightning.utils.logger import setup_logger

__all__ = ["default_argument_parser", "default_setup", "default_writers"]


def _lookup(cfg: Any, *keys: str, default: Any = None) -> Any:
    """The first of ``keys`` (dotted) present in ``cfg`` — detectron2 reads yacs, then LazyConfig names."""
    for key in keys:
        node = cfg
        try:
            for part in key.split("."):
                node = node[part] if isinstance(node, Mapping) else getattr(node, part)
        except (KeyError, AttributeError):
            continue
        return node
    return default


def default_setup(cfg: Any, args: Any) -> None:
    """Prepare a run as detectron2's ``default_setup`` does.

    1. Create ``OUTPUT_DIR`` (or ``output_dir`` / ``train.output_dir``) on the main process.
    2. Set up the "d2lightning" and "lightning.pytorch" loggers: console on rank 0, ``log.txt`` (rank 0) and
       ``log.txt.rank{r}`` files in the output directory.
    3. Log rank and world size, the environment, the command-line arguments and the config file; the main
       process writes the full config to ``OUTPUT_DIR/config.yaml``.
    4. Seed every RNG with ``SEED + rank`` (a generated, logged seed when ``SEED < 0``).
    5. Unless ``--eval-only``, set ``cudnn.benchmark = CUDNN_BENCHMARK``; apply ``FLOAT32_PRECISION`` if set.

    Args:
        cfg: a ``CfgNode`` (or any mapping/attribute tree with detectron2's or LazyConfig's key names).
        args: the parsed arguments (a namespace or a mapping; missing entries count as unset).
    """
    output_dir = _lookup(cfg, "OUTPUT_DIR", "output_dir", "train.output_dir")
    rank = comm.get_rank()
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    logger = setup_logger(output_dir, distributed_rank=rank)
    logger.info(f"Rank of current process: {rank}. World size: {comm.get_world_size()}")
    logger.info("Environment info:\n" + collect_env_info())

    def arg(name: str, default: Any = None) -> Any:
        return args.get(name, default) if isinstance(args, Mapping) else getattr(args, name, default)

    logger.info(f"Command line arguments: {args}")
    config_file = arg("config_file")
    if config_file:
        with open(config_file) as f:
            logger.info(f"Contents of args.config_file={config_file}:\n{f.read()}")
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        dump = getattr(cfg, "dump", None)
        with open(path, "w") as f:
            f.write(dump() if callable(dump) else str(cfg))
        logger.info(f"Full config saved to {path}")

    seed = _lookup(cfg, "SEED", "seed", "train.seed", default=-1)
    seed_all_rng(None if seed is None or seed < 0 else seed + rank)
    if not arg("eval_only", False):
        torch.backends.cudnn.benchmark = bool(_lookup(cfg, "CUDNN_BENCHMARK", "train.cudnn_benchmark", default=False))
    precision = _lookup(cfg, "FLOAT32_PRECISION", "train.float32_precision", default="")
    if precision:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cuda.matmul.allow_tf32 = precision != "highest"
        torch.backends.cudnn.allow_tf32 = precision != "highest"


def default_writers(output_dir: str, max_iter: int | None = None) -> list[EventWriter]:
    """detectron2's writers: the console printer, ``output_dir/metrics.json`` and TensorBoard in ``output_dir``.

    Args:
        output_dir: the directory (created if missing).
        max_iter: the run's ``max_iter``, for the printer's ETA.
    """
    os.makedirs(output_dir, exist_ok=True)
    return [
        CommonMetricPrinter(max_iter),
        JSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardXWriter(output_dir),
    ]


def __getattr__(name: str) -> object:
    # detectron2 users write `from detectron2.engine.defaults import DefaultTrainer`; the classes live in their
    # own modules (which import this one), so they are resolved lazily.
    if name == "DefaultTrainer":
        from d2lightning.engine.default_trainer import DefaultTrainer

        return DefaultTrainer
    if name == "DefaultPredictor":
        from d2lightning.engine.predictor import DefaultPredictor

        return DefaultPredictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Common training-script boilerplate with detectron2's names (``detectron2.engine.defaults``).

``default_setup`` lives here; ``default_argument_parser`` (defined in ``d2lightning._argument_parser``, which
imports neither torch nor Lightning, so that the command line answers ``--help`` at once), ``default_writers``,
``create_ddp_model``, ``DefaultTrainer`` and ``DefaultPredictor`` (in their own modules) are importable from here
too, as in detectron2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from d2lightning._argument_parser import default_argument_parser
from d2lightning.config.lookup import cfg_get
from d2lightning.engine.distributed.ddp import create_ddp_model
from d2lightning.engine.recipes.default_trainer import DefaultTrainer
from d2lightning.engine.recipes.output_dir import make_output_dir
from d2lightning.engine.recipes.predictor import DefaultPredictor
from d2lightning.engine.recipes.writers import default_writers
from d2lightning.utils import comm
from d2lightning.utils.env import collect_env_info, seed_all_rng
from d2lightning.utils.logger import setup_logger

__all__ = [
    "DefaultPredictor",
    "DefaultTrainer",
    "create_ddp_model",
    "default_argument_parser",
    "default_setup",
    "default_writers",
]

#: detectron2's own loggers, which ``default_setup`` configures as detectron2's does (console on rank 0, log files).
DETECTRON2_LOGGERS = ("fvcore", "detectron2")
_OUTPUT_DIR_KEYS = ("OUTPUT_DIR", "output_dir", "train.output_dir")  # detectron2 reads yacs, then LazyConfig names


def default_setup(cfg: Any, args: Any) -> None:
    """Prepare a run as detectron2's ``default_setup`` does.

    1. Create ``OUTPUT_DIR`` (or ``output_dir`` / ``train.output_dir``) on the main process.
    2. Set up detectron2's "fvcore" and "detectron2" loggers as detectron2 does, and d2lightning's own
       "d2lightning" logger: console on rank 0, ``log.txt`` (rank 0) and ``log.txt.rank{r}`` files in the output
       directory, all three writing to the same files (so whatever detectron2's modules log appears there too).
    3. Log rank and world size, the environment, the command-line arguments and the config file; the main
       process writes the full config to ``OUTPUT_DIR/config.yaml`` (a LazyConfig with ``LazyConfig.save``).
    4. Seed every RNG with ``SEED + rank`` (a generated, logged seed when ``SEED < 0``).
    5. Unless ``--eval-only``, set ``cudnn.benchmark = CUDNN_BENCHMARK``; apply ``FLOAT32_PRECISION`` if set.

    Args:
        cfg: a ``CfgNode`` (or any mapping/attribute tree with detectron2's or LazyConfig's key names).
        args: the parsed arguments (a namespace or a mapping; missing entries count as unset).
    """
    output_key = next((k for k in _OUTPUT_DIR_KEYS if cfg_get(cfg, k, default=None) is not None), _OUTPUT_DIR_KEYS[0])
    output_dir = cfg_get(cfg, output_key, default=None)
    rank = comm.get_rank()
    if comm.is_main_process() and output_dir:
        make_output_dir(output_dir, output_key)  # an error names the key when the directory cannot be used
    for name in DETECTRON2_LOGGERS:
        setup_logger(output_dir, distributed_rank=rank, name=name)
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
        _save_config(cfg, path, logger)
        logger.info(f"Full config saved to {path}")

    seed = cfg_get(cfg, "SEED", "seed", "train.seed", default=-1)
    seed_all_rng(None if seed is None or seed < 0 else seed + rank)
    if not arg("eval_only", False):
        torch.backends.cudnn.benchmark = bool(cfg_get(cfg, "CUDNN_BENCHMARK", "train.cudnn_benchmark", default=False))
    precision = cfg_get(cfg, "FLOAT32_PRECISION", "train.float32_precision", default="")
    if precision:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cuda.matmul.allow_tf32 = precision != "highest"
        torch.backends.cudnn.allow_tf32 = precision != "highest"


def _save_config(cfg: Any, path: str, logger: Any) -> None:
    """Write ``cfg`` to ``path``: a yacs-style cfg with its ``dump()``, a LazyConfig with ``LazyConfig.save``."""
    from omegaconf import DictConfig

    if isinstance(cfg, DictConfig):
        from d2lightning.config.lazy import LazyConfig

        LazyConfig.save(cfg, path)
        return
    dump = getattr(cfg, "dump", None)
    text = dump() if callable(dump) else str(cfg)
    logger.info(f"Running with full config:\n{text}")
    with open(path, "w") as f:
        f.write(text)

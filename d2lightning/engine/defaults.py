"""Common training-script boilerplate with detectron2's names (``detectron2.engine.defaults``).

``default_argument_parser``, ``default_setup`` and ``default_writers`` live here; ``create_ddp_model``,
``DefaultTrainer`` and ``DefaultPredictor`` (in their own modules) are importable from here too, as in detectron2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any

import torch

from d2lightning.engine.ddp import create_ddp_model
from d2lightning.utils import comm
from d2lightning.utils.env import collect_env_info, seed_all_rng
from d2lightning.utils.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardXWriter
from d2lightning.utils.logger import setup_logger

__all__ = [  # noqa: F822 (DefaultPredictor and DefaultTrainer are resolved by __getattr__ below)
    "DefaultPredictor",
    "DefaultTrainer",
    "create_ddp_model",
    "default_argument_parser",
    "default_setup",
    "default_writers",
]

#: detectron2's own loggers, which ``default_setup`` configures as detectron2's does (console on rank 0, log files).
DETECTRON2_LOGGERS = ("fvcore", "detectron2")


def _default_port() -> int:
    # detectron2's rule: deterministic per user, so that a port still in use reveals orphaned workers.
    uid = os.getuid() if sys.platform != "win32" else 1
    return 2**15 + 2**14 + hash(uid) % 2**14


def default_argument_parser(epilog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of detectron2's training scripts (detectron2 ``default_argument_parser``).

    Same options and defaults as detectron2: ``--config-file FILE`` (""), ``--resume``, ``--eval-only``,
    ``--num-gpus`` (1, per machine), ``--num-machines`` (1), ``--machine-rank`` (0), ``--dist-url``
    (``tcp://127.0.0.1:<port>`` with port ``2**15 + 2**14 + hash(uid) % 2**14``, uid 1 on Windows) and the
    trailing ``opts`` (everything after the options; ``[]`` when there is none). Pass ``args.opts`` to
    :func:`d2lightning.config.apply_overrides`, which takes both ``KEY VALUE`` pairs and ``a.b=c`` items.

    Args:
        epilog: text shown after the help; None gives detectron2's usage examples.

    Returns:
        An ``argparse.ArgumentParser`` (RawDescriptionHelpFormatter).

    Raises:
        TypeError: ``epilog`` is neither a str nor None.

    Example::

        args = default_argument_parser().parse_args()
        cfg = get_cfg()
        cfg.merge_from_file(args.config_file)
        apply_overrides(cfg, args.opts)
    """
    if epilog is not None and not isinstance(epilog, str):
        raise TypeError(f"epilog must be a str or None, got {type(epilog).__name__}")
    prog = sys.argv[0] if sys.argv and sys.argv[0] else "train_net.py"
    parser = argparse.ArgumentParser(
        epilog=epilog
        or f"""
Examples:

Run on single machine:
    $ {prog} --num-gpus 8 --config-file cfg.yaml

Change some config options:
    $ {prog} --config-file cfg.yaml MODEL.WEIGHTS /path/to/weight.pth SOLVER.BASE_LR 0.001
    $ {prog} --config-file cfg.yaml SOLVER.MAX_ITER=1000 LIGHTNING.PRECISION=bf16-mixed

Run on multiple machines:
    (machine0)$ {prog} --machine-rank 0 --num-machines 2 --dist-url <URL> [--other-flags]
    (machine1)$ {prog} --machine-rank 1 --num-machines 2 --dist-url <URL> [--other-flags]
""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="resume from the last checkpoint in OUTPUT_DIR if there is one "
        "(see DefaultTrainer.resume_or_load); otherwise start from MODEL.WEIGHTS",
    )
    parser.add_argument("--eval-only", action="store_true", help="perform evaluation only")
    parser.add_argument("--num-gpus", type=int, default=1, help="number of gpus *per machine*")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="the rank of this machine (unique per machine)")
    parser.add_argument(
        "--dist-url",
        default=f"tcp://127.0.0.1:{_default_port()}",
        help="initialization URL for the pytorch distributed backend "
        "(https://pytorch.org/docs/stable/distributed.html)",
    )
    parser.add_argument(
        "opts",
        help="config overrides at the end of the command: space-separated 'PATH.KEY VALUE' pairs "
        "(yacs style) and/or 'PATH.KEY=VALUE' items (LazyConfig style)",
        default=None,
        nargs=argparse.REMAINDER,
    )
    return parser


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
    output_dir = _lookup(cfg, "OUTPUT_DIR", "output_dir", "train.output_dir")
    rank = comm.get_rank()
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
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

    seed = _lookup(cfg, "SEED", "seed", "train.seed", default=-1)
    seed_all_rng(None if seed is None or seed < 0 else seed + rank)
    if not arg("eval_only", False):
        torch.backends.cudnn.benchmark = bool(_lookup(cfg, "CUDNN_BENCHMARK", "train.cudnn_benchmark", default=False))
    precision = _lookup(cfg, "FLOAT32_PRECISION", "train.float32_precision", default="")
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

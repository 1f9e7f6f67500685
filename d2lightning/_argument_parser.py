"""detectron2's ``default_argument_parser``, in a module that imports neither torch nor Lightning.

Public as ``d2lightning.engine.defaults.default_argument_parser`` (and ``d2lightning.engine``), where detectron2
has it; it lives here so that ``d2lightning --help`` and the other commands that do not train can build their
parser without importing the engine.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["default_argument_parser"]


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

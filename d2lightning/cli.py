"""The ``d2lightning`` command (also ``python -m d2lightning``): ``train``, ``eval``, ``predict``, ``plot``,
``slurm submit``.

``d2lightning train`` is detectron2's ``tools/train_net.py`` on d2lightning (and, for a Python config file,
``tools/lazyconfig_train_net.py``: see :mod:`d2lightning.engine.recipes.lazy_training`): the same options
(``default_argument_parser``), ``default_setup``, a ``DefaultTrainer`` whose evaluator is the COCO-style box
evaluator, ``--resume`` / ``--eval-only``, and ``launch`` for several processes or machines. User errors (a bad
config, an unknown dataset, an unreadable image, a damaged checkpoint, a busy ``OUTPUT_DIR``... see
:mod:`d2lightning.cli_errors`) end with one clear message and exit code 1, not a traceback (set ``D2L_DEBUG=1``
to get it). Training claims ``OUTPUT_DIR`` before writing anything there; SIGTERM ends it with a checkpoint and
exit code 143, and so does a first Ctrl-C, with exit code 130 (a second one aborts at once). Flags may also come after
the config overrides (:mod:`d2lightning.cli_flags`).
"""

from __future__ import annotations

import os

# Several processes share few cores on CPU machines: busy-waiting OpenMP threads then slow everything
# down many times over. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["main"]

#: The exit status after Ctrl-C (128 + SIGINT), as a shell reports for a process that SIGINT ended.
INTERRUPTED = 130


def _trainer_class() -> Any:
    from d2lightning.engine import DefaultTrainer
    from d2lightning.evaluation import COCOEvaluator

    class Trainer(DefaultTrainer):
        """``DefaultTrainer`` with the COCO-style box evaluator (detectron2's ``train_net.Trainer``)."""

        @classmethod
        def build_evaluator(cls, cfg: Any, dataset_name: str) -> Any:
            return COCOEvaluator(dataset_name, output_dir=os.path.join(cfg.OUTPUT_DIR, "inference"))

    return Trainer


def load_config(args: argparse.Namespace) -> Any:
    """Load the config file (or built-in config) ``--config-file`` names, apply the overrides, freeze."""
    from d2lightning.config import apply_overrides, get_cfg
    from d2lightning.model_zoo import resolve_config_file

    if not args.config_file:
        raise ValueError("--config-file is required (a YAML file, or a built-in config such as shapes_detector)")
    args.config_file = resolve_config_file(args.config_file)
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    apply_overrides(cfg, args.opts)
    cfg.freeze()
    return cfg


def setup(args: argparse.Namespace, cfg: Any = None) -> Any:
    """Load the config (unless given) and run ``default_setup``."""
    from d2lightning.engine import default_setup

    cfg = load_config(args) if cfg is None else cfg
    default_setup(cfg, args)
    _quiet_console()
    return cfg


def _quiet_console() -> None:
    if not os.environ.get("D2L_DEBUG"):
        _console_without_tracebacks()


@contextlib.contextmanager
def _output_dir_claimed(output_dir: str, args: argparse.Namespace, key: str) -> Iterator[None]:
    """Training holds its output directory (main process) before ``default_setup`` writes config.yaml and log.txt.

    A directory that cannot be created or written to is an error naming ``key`` (``default_setup`` does the same
    for ``--eval-only``)."""
    from d2lightning.engine.recipes.output_dir import make_output_dir
    from d2lightning.utils import comm
    from d2lightning.utils.run_lock import OutputDirLock

    if args.eval_only or not comm.is_main_process() or not output_dir:
        yield
        return
    make_output_dir(output_dir, key)
    with OutputDirLock(output_dir):
        yield


class _WithoutTraceback(logging.Formatter):
    """Formats a record with ``inner`` but leaves out its traceback (which the log file keeps)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        if not (record.exc_info or record.exc_text):
            return self._inner.format(record)
        copy = logging.makeLogRecord(record.__dict__)
        copy.exc_info, copy.exc_text = None, None
        return f"{self._inner.format(copy)} (traceback in log.txt; D2L_DEBUG=1 shows it here)"


def _console_without_tracebacks() -> None:
    """User errors end with one line on stderr: keep tracebacks logged on the way (e.g. detectron2's
    "Exception during training:") out of the console; ``log.txt`` still has them."""
    lg = logging.getLogger("d2lightning")
    for handler in lg.handlers:
        formatter = handler.formatter
        if type(handler) is logging.StreamHandler and formatter and not isinstance(formatter, _WithoutTraceback):
            handler.setFormatter(_WithoutTraceback(formatter))


_MISMATCH = "the evaluation results do not match TEST.EXPECTED_RESULTS (the log lists the differences)"


def train_main(args: argparse.Namespace) -> dict[str, Any] | None:
    """One process of ``d2lightning train``; returns the last evaluation results."""
    from d2lightning.utils import comm

    if str(args.config_file).endswith(".py"):  # a LazyConfig: detectron2's tools/lazyconfig_train_net.py
        from d2lightning.engine.recipes import lazy_training

        lazy_cfg = lazy_training.load_config(args)
        weights = lazy_cfg.train.init_checkpoint
        untrained = _untrained(args, weights, "train.init_checkpoint", "=", lazy_cfg.train.output_dir)
        with _output_dir_claimed(lazy_cfg.train.output_dir, args, "train.output_dir"):
            lazy_training.setup(args, lazy_cfg)
            _quiet_console()
            results = lazy_training.run(args, lazy_cfg)
    else:
        cfg = load_config(args)
        untrained = _untrained(args, cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS", " ", cfg.OUTPUT_DIR)
        with _output_dir_claimed(cfg.OUTPUT_DIR, args, "OUTPUT_DIR"):
            results = _run(setup(args, cfg), args)
    if comm.is_main_process() and results:
        _print_final_table(results)
    if comm.is_main_process() and untrained:
        print(f"d2lightning {args.command}: warning: {untrained}", file=sys.stderr, flush=True)
    return results


def _untrained(args: argparse.Namespace, weights: str, weights_key: str, assign: str, output_dir: str) -> str | None:
    """The warning for an evaluation of a randomly initialised model, or None: printed once, after the results,
    where it is seen (the log above it is long). ``assign`` joins key and value in an override (" " or "=")."""
    if not args.eval_only or weights or (args.resume and os.path.exists(os.path.join(output_dir, "last_checkpoint"))):
        return None
    why = f"{output_dir} has no checkpoint to resume from" if args.resume else "--resume was not given"
    give = f"{weights_key}{assign}path/to/model.pth"
    return (
        f"these are the results of an untrained model: {weights_key} is empty and {why}; pass {give}, or --resume "
        "to evaluate the last checkpoint of the output directory"
    )


def _run(cfg: Any, args: argparse.Namespace) -> Any:
    """Train (or evaluate) with the set-up config; returns the evaluation results."""
    from d2lightning.checkpoint import DetectionCheckpointer
    from d2lightning.engine.recipes.startup_checks import check_device
    from d2lightning.evaluation import verify_results
    from d2lightning.utils import comm

    trainer_cls = _trainer_class()
    if args.eval_only:
        check_device(cfg)
        model = trainer_cls.build_model(cfg)
        checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = trainer_cls.test(cfg, model)
        if comm.is_main_process() and not verify_results(cfg, results):
            raise ValueError(_MISMATCH)
        return results
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    try:
        return trainer.train()
    except SystemExit as e:  # DefaultTrainer.train exits with 1 on a mismatch, as detectron2's
        if e.code == 1 and len(cfg.TEST.EXPECTED_RESULTS):
            raise ValueError(_MISMATCH) from None
        raise


def _print_final_table(results: dict[str, Any]) -> None:
    from d2lightning.evaluation import flatten_results_dict

    flat = flatten_results_dict(results)
    width = max(len(k) for k in flat)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  ------"]
    lines += [f"{k.ljust(width)}  {v:6.2f}" for k, v in flat.items()]
    print("\nFinal evaluation results (box AP, percent):\n" + "\n".join(lines), flush=True)


def _train_command(args: argparse.Namespace) -> int:
    from d2lightning._argument_parser import default_argument_parser
    from d2lightning.engine import launch
    from d2lightning.engine.distributed.cluster import detect_cluster_environment

    dist_url = args.dist_url
    if dist_url == default_argument_parser().get_default("dist_url") and detect_cluster_environment() is not None:
        dist_url = None  # the default URL is for processes launch spawns; srun/torchrun bring their rendezvous
    with _first_ctrl_c_checkpoints():
        launch(
            train_main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=dist_url,
            args=(args,),
        )
    return 0


@contextlib.contextmanager
def _first_ctrl_c_checkpoints() -> Iterator[None]:
    """While the command trains (in this process and the workers it starts, which inherit the environment), a first
    Ctrl-C stops training at the next iteration boundary with a checkpoint, as SIGTERM does, and exits with 130;
    a second one aborts at once (see :class:`~d2lightning.engine.recipes.termination.SigtermCheckpoint`). The Python API
    keeps detectron2's ``KeyboardInterrupt``."""
    from d2lightning.engine.recipes.termination import SIGINT_POLICY_VARIABLE

    previous = os.environ.get(SIGINT_POLICY_VARIABLE)
    os.environ[SIGINT_POLICY_VARIABLE] = "checkpoint"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[SIGINT_POLICY_VARIABLE]
        else:
            os.environ[SIGINT_POLICY_VARIABLE] = previous


def _predict_command(args: argparse.Namespace) -> int:
    from d2lightning.predict import predict_image

    predict_image(args)
    return 0


_CONFIG_FILE_HELP = (
    "--config-file takes a YAML file, or the name of a config built into the package\n"
    "(d2lightning.model_zoo.builtin_config_names()), e.g. shapes_detector."
)


def build_parser(parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``d2lightning`` argument parser with its subcommands (built without importing torch or Lightning).

    Args:
        parser_class: the class of the parser and of its subcommands' parsers.
    """
    from d2lightning._argument_parser import default_argument_parser

    parser = parser_class(prog="d2lightning", description="detectron2's training engine on Lightning.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, summary, description, defaults in (
        (
            "train",
            "train (or with --eval-only evaluate) a model from a config file",
            "Train as detectron2's tools/train_net.py does.",
            {},
        ),
        (
            "eval",
            "evaluate MODEL.WEIGHTS (or --resume)",
            "Evaluate MODEL.WEIGHTS (or, with --resume, the last checkpoint).",
            {"eval_only": True},
        ),
    ):
        command = sub.add_parser(
            name,
            parents=[default_argument_parser()],
            add_help=False,
            help=summary,
            description=f"{description}\n{_CONFIG_FILE_HELP}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.set_defaults(func=_train_command, **defaults)
    predict = sub.add_parser("predict", help="draw a model's predictions on an image")
    predict.add_argument("--config-file", required=True, metavar="FILE", help="a YAML file or a built-in config name")
    predict.add_argument("--input", required=True, help="an image file")
    predict.add_argument("--output", required=True, help="where to write the image with boxes drawn")
    predict.add_argument("--confidence-threshold", type=float, default=0.5)
    predict.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE or a.b=c)")
    predict.set_defaults(func=_predict_command)
    from d2lightning.plot import add_plot_parser
    from d2lightning.slurm.command import add_slurm_parser

    add_plot_parser(sub)
    add_slurm_parser(sub)
    return parser


def _aborted(args: argparse.Namespace) -> str:
    """The line for a run that Ctrl-C ended at once (a second Ctrl-C, or one outside the training loop)."""
    if args.command == "train" and not getattr(args, "eval_only", False):
        return (
            "aborted by Ctrl-C, without a checkpoint of the iterations since the last one (a first Ctrl-C during "
            "training stops with a checkpoint); to continue from the last checkpoint, run the same command with "
            "--resume"
        )
    return "aborted by Ctrl-C"


def _quiet_lightning_notices() -> None:
    """Drop Lightning's advertising tip and two notices that say nothing about the user's run."""
    import warnings

    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    if "SLURM_JOB_ID" not in os.environ:  # outside a Slurm job, the "srun is available" hint is noise
        warnings.filterwarnings("ignore", message=".*The `srun` command is available on your system.*")
    # one module-level function: addFilter ignores it when already there, so repeated main() calls add nothing
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_a_tip)


def _not_a_tip(record: logging.LogRecord) -> bool:
    # and not Lightning's "Detected KeyboardInterrupt" either: the command says in one line what Ctrl-C did
    return not str(record.msg).startswith(("💡 Tip", "\nDetected KeyboardInterrupt"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    from d2lightning.cli_flags import FlagError, command_name, parse_command_line

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_command_line(build_parser, argv)  # flags after the config overrides are flags too
    except FlagError as e:
        print(f"d2lightning {command_name(argv)}: error: {e}", file=sys.stderr)
        return 1
    _quiet_lightning_notices()
    if os.environ.get("D2L_DEBUG"):
        return int(args.func(args))
    from d2lightning.cli_errors import user_error_message

    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"d2lightning {args.command}: {_aborted(args)}", file=sys.stderr)
        return INTERRUPTED
    except SystemExit as e:
        stopped = getattr(e, "message", None)  # TrainingPreempted: SIGTERM or a first Ctrl-C, with a checkpoint
        if not stopped or not isinstance(e.code, int):
            raise
        print(f"d2lightning {args.command}: {stopped}", file=sys.stderr)
        return e.code
    except Exception as e:
        message = user_error_message(e)
        if message is None:
            raise
        print(f"d2lightning {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

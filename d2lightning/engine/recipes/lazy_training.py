"""Training and evaluation from a LazyConfig: detectron2's ``tools/lazyconfig_train_net.py`` on d2lightning.

What ``d2lightning train --config-file cfg.py`` runs (``cli.py`` only dispatches here on the file type). It lives
in the engine, beside ``DefaultTrainer``, because it is the LazyConfig counterpart of that composition layer: it
builds a run from the engine's public parts and is reusable from Python without the command line.

The config has detectron2's layout (``configs/common/train.py``):

- ``model``, ``optimizer`` (its ``params.model`` is set to the built model), ``lr_multiplier`` (a param
  scheduler), ``dataloader.train`` / ``dataloader.test`` / ``dataloader.evaluator`` — built with ``instantiate``;
- ``train``: ``output_dir``, ``init_checkpoint``, ``max_iter``, ``amp.enabled`` (``AMPTrainer`` instead of
  ``SimpleTrainer``), ``ddp`` (``create_ddp_model`` arguments), ``checkpointer`` (``PeriodicCheckpointer``
  arguments: ``period``, ``max_to_keep``), ``eval_period``, ``log_period``, ``device``, ``seed``; d2lightning adds
  the optional ``fsdp`` (``dict(enabled=True, units=[...], min_params=..., reshard_after_forward=...,
  param_dtype=..., reduce_dtype=...)``): the model is sharded with FSDP2 over the processes instead of wrapped in
  DDP (see :class:`~d2lightning.engine.FSDPSharding`).

The hooks are detectron2's, in its order: ``IterationTimer``, ``LRScheduler``, ``PeriodicCheckpointer`` (main
process; its files still hold every rank's RNG states and data-stream positions, gathered by the run),
``EvalHook``, ``PeriodicWriter`` (main process) — and, last, the signal hook ``DefaultTrainer`` also registers
(SIGTERM, or Slurm's preemption signals: a checkpoint at an iteration boundary). ``--resume`` continues from the
last checkpoint in ``train.output_dir``; ``--eval-only`` evaluates ``train.init_checkpoint`` (with ``--resume``,
the last checkpoint).

Example::

    from d2lightning.engine import default_argument_parser
    from d2lightning.engine.recipes.lazy_training import main

    main(default_argument_parser().parse_args(["--config-file", "shapes_detector.py"]))
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

__all__ = ["do_test", "do_train", "load_config", "main", "setup"]

logger = logging.getLogger(__name__)

#: ``train.*`` keys read by :func:`do_train`; a missing one is reported before anything is built.
TRAIN_KEYS = (
    "output_dir", "init_checkpoint", "max_iter", "amp.enabled", "ddp", "checkpointer", "eval_period",
    "log_period", "device",
)  # fmt: skip


def load_config(args: Any) -> Any:
    """Load ``args.config_file`` (a file, or a built-in config name such as ``shapes_detector.py``) and apply
    ``args.opts`` (``a.b=c``); returns the config, checked for what training reads."""
    from d2lightning.config import LazyConfig
    from d2lightning.model_zoo import resolve_config_file

    args.config_file = resolve_config_file(args.config_file)
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    _check_layout(cfg, args.config_file)
    return cfg


def setup(args: Any, cfg: Any = None) -> Any:
    """:func:`load_config` (unless ``cfg`` is given), then ``default_setup``; returns the config."""
    from d2lightning.engine.defaults import default_setup

    cfg = load_config(args) if cfg is None else cfg
    default_setup(cfg, args)
    return cfg


def do_test(cfg: Any, model: Any) -> dict[str, Any] | None:
    """Evaluate ``model`` on ``cfg.dataloader.test`` with ``cfg.dataloader.evaluator`` (when the config has one)
    and print the results in detectron2's CSV format; returns them."""
    from d2lightning.config.instantiate import instantiate_at
    from d2lightning.evaluation import inference_on_dataset, print_csv_format

    if "evaluator" not in cfg.dataloader:
        return None
    loader = instantiate_at(cfg, "dataloader.test")
    results = inference_on_dataset(model, loader, instantiate_at(cfg, "dataloader.evaluator"))
    print_csv_format(results)
    return results


def do_train(args: Any, cfg: Any) -> dict[str, Any] | None:
    """Train as ``lazyconfig_train_net.do_train`` does; returns the results of the last evaluation, if any."""
    from d2lightning.checkpoint import DetectionCheckpointer
    from d2lightning.config.instantiate import instantiate_at
    from d2lightning.engine import AMPTrainer, SimpleTrainer, create_ddp_model, default_writers, hooks
    from d2lightning.slurm.lightning_setup import termination_hook
    from d2lightning.utils import comm

    model = instantiate_at(cfg, "model")
    logger.info(f"Model:\n{model}")
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate_at(cfg, "optimizer")
    train_loader = instantiate_at(cfg, "dataloader.train")
    sharding = _sharding(cfg)
    if sharding is None:  # with train.fsdp, FSDP shards the bare model when the fit starts
        model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optimizer)
    if sharding is not None:
        from d2lightning.engine.distributed.fsdp import fsdp_strategy

        trainer.lightning_kwargs = {"strategy": fsdp_strategy(comm.get_world_size())}
        trainer.sharding = sharding
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    last: list[dict[str, Any] | None] = [None]

    def evaluate() -> dict[str, Any] | None:
        last[0] = do_test(cfg, model)
        return last[0]

    main_process = comm.is_main_process()
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=_lr_multiplier(cfg)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main_process else None,
            hooks.EvalHook(cfg.train.eval_period, evaluate),
            hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
            if main_process
            else None,
            termination_hook(),  # SIGTERM (or Slurm's signals): a checkpoint at an iteration boundary
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    # the checkpoint holds the iteration that had just finished: continue with the next one
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return last[0]


def evaluate_checkpoint(args: Any, cfg: Any) -> dict[str, Any] | None:
    """``--eval-only``: load ``train.init_checkpoint`` (with ``--resume``: the last checkpoint of
    ``train.output_dir``, else ``init_checkpoint``) into a new model and evaluate it."""
    from d2lightning.checkpoint import DetectionCheckpointer
    from d2lightning.config.instantiate import instantiate_at
    from d2lightning.engine import create_ddp_model

    model = instantiate_at(cfg, "model")
    model.to(cfg.train.device)
    model = create_ddp_model(model)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir)
    if args.resume:
        checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=True)
    else:
        checkpointer.load(cfg.train.init_checkpoint)
    results = do_test(cfg, model)
    print(results)
    return results


def main(args: Any) -> dict[str, Any] | None:
    """One process of a LazyConfig run (``lazyconfig_train_net.main``); returns the last evaluation results."""
    cfg = setup(args)
    return run(args, cfg)


def run(args: Any, cfg: Any) -> dict[str, Any] | None:
    """Evaluate (``args.eval_only``) or train the set-up config ``cfg``."""
    return evaluate_checkpoint(args, cfg) if args.eval_only else do_train(args, cfg)


_FSDP_KEYS = ("enabled", "units", "min_params", "reshard_after_forward", "param_dtype", "reduce_dtype")


def _sharding(cfg: Any) -> Any:
    """``train.fsdp`` as an :class:`~d2lightning.engine.FSDPSharding`, or None (absent, or ``enabled`` False).

    Raises:
        ConfigError: naming the key, for an unknown ``train.fsdp`` key or a setting the run cannot honour.
    """
    from omegaconf import OmegaConf

    from d2lightning.config import ConfigError
    from d2lightning.engine import FSDPSharding
    from d2lightning.utils import comm

    section = OmegaConf.select(cfg, "train.fsdp", default=None)
    if section is None:
        return None
    raw = OmegaConf.to_container(section) if OmegaConf.is_config(section) else section
    if not isinstance(raw, Mapping):
        raise ConfigError(f"train.fsdp must be a mapping (dict(enabled=True, ...)), got {raw!r}", key="train.fsdp")
    settings = {str(k): v for k, v in raw.items()}
    unknown = sorted(set(settings) - set(_FSDP_KEYS))
    if unknown:
        raise ConfigError(f"train.fsdp.{unknown[0]}: unknown key; train.fsdp takes {', '.join(_FSDP_KEYS)}")
    if not settings.pop("enabled", True):
        return None
    if cfg.train.amp.enabled:
        raise ConfigError(
            "train.fsdp with train.amp.enabled=True: AMPTrainer's GradScaler does not work on sharded gradients; "
            "set train.fsdp.param_dtype='bfloat16' (FSDP's mixed precision) instead",
            key="train.amp.enabled",
        )
    if comm.get_world_size() < 2:
        raise ConfigError(
            "train.fsdp shards the model over several processes, but this run has one: start two or more with "
            "`d2lightning train --num-gpus N` (N >= 2), srun or torchrun, or set train.fsdp.enabled=False",
            key="train.fsdp",
        )
    try:
        return FSDPSharding(**settings)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"train.fsdp: {e}", key="train.fsdp") from None


def _lr_multiplier(cfg: Any) -> Any:
    """``cfg.lr_multiplier`` instantiated; one warning naming both keys when its warmup lasts the whole run (the
    learning rate then never reaches the optimizer's; the YAML path warns likewise for ``SOLVER.WARMUP_ITERS``)."""
    from omegaconf import OmegaConf

    from d2lightning.config.instantiate import instantiate_at

    length = OmegaConf.select(cfg, "lr_multiplier.warmup_length", default=None)
    factor = OmegaConf.select(cfg, "lr_multiplier.warmup_factor", default=None)
    if isinstance(length, (int, float)) and length >= 1 and isinstance(factor, (int, float)) and factor < 1:
        logger.warning(
            f"lr_multiplier.warmup_length ({length:g}) covers all of train.max_iter ({cfg.train.max_iter}): the "
            "learning rate warms up during the whole run and never reaches the optimizer's lr; lower "
            "lr_multiplier.warmup_length (a fraction of train.max_iter, e.g. 0.1)"
        )
    return instantiate_at(cfg, "lr_multiplier")


def _check_layout(cfg: Any, config_file: str) -> None:
    """A clear error naming what a config misses for training, instead of an omegaconf traceback later."""
    from omegaconf import OmegaConf

    from d2lightning.config import ConfigError

    sections = ["model", "optimizer", "lr_multiplier", "dataloader.train", "dataloader.test"]
    wanted = [*sections, *(f"train.{k}" for k in TRAIN_KEYS)]
    missing = [k for k in wanted if OmegaConf.select(cfg, k, default=_MISSING) is _MISSING]
    if missing:
        raise ConfigError(
            f"LazyConfig {config_file!r} lacks {', '.join(repr(k) for k in missing)}: a training config defines "
            "model, optimizer, lr_multiplier, dataloader.{train,test[,evaluator]} and train.* (see "
            "the built-in shapes_detector.py)",
            key=missing[0],
        )
    if not isinstance(cfg.train.ddp, Mapping) or not isinstance(cfg.train.checkpointer, Mapping):
        raise ConfigError(f"LazyConfig {config_file!r}: train.ddp and train.checkpointer must be mappings")


_MISSING = object()

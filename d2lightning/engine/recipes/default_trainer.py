"""detectron2's ``DefaultTrainer``: a config-driven trainer with the standard hooks, on Lightning.

Same construction order, hooks (in ``build_hooks`` order), checkpoint layout, ``resume_or_load`` and
overridable class-method factories as detectron2. The config's ``LIGHTNING`` section adds what only Lightning has
(precision, loggers, callbacks, strategy...). Given a detectron2 ``CfgNode``, the factories are detectron2's own
(see :class:`DefaultTrainer`), so detectron2's ``tools/train_net.py`` runs with only its import changed.
"""

from __future__ import annotations

import logging
import sys
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from d2lightning import _compat
from d2lightning.checkpoint import CorruptCheckpointError, DetectionCheckpointer
from d2lightning.config.lookup import cfg_get
from d2lightning.engine import hooks
from d2lightning.engine.amp_trainer import AMPTrainer
from d2lightning.engine.distributed.ddp import create_ddp_model
from d2lightning.engine.recipes.lightning_config import (
    lightning_callbacks_from_cfg,
    lightning_kwargs_from_cfg,
    sharding_from_cfg,
)
from d2lightning.engine.recipes.output_dir import claim_output_dir, warn_before_overwriting
from d2lightning.engine.recipes.startup_checks import check_trainable
from d2lightning.engine.recipes.writers import default_writers
from d2lightning.engine.simple_trainer import SimpleTrainer
from d2lightning.engine.trainer_base import TrainerBase
from d2lightning.evaluation import (
    DatasetEvaluator,
    flatten_results_dict,
    inference_on_dataset,
    print_csv_format,
    verify_results,
)
from d2lightning.layers.batch_norm import get_bn_modules
from d2lightning.slurm.lightning_setup import termination_hook
from d2lightning.utils import comm
from d2lightning.utils.events import EventWriter
from d2lightning.utils.logger import setup_logger

if TYPE_CHECKING:
    from d2lightning.engine.lightning.run import RunBinding

__all__ = ["DefaultTrainer"]

logger = logging.getLogger(__name__)


def _accumulate_grad_batches(cfg: Any) -> int:
    """``LIGHTNING.ACCUMULATE_GRAD_BATCHES`` (1 for a config without the section, e.g. detectron2's)."""
    return int(cfg_get(cfg, "LIGHTNING.ACCUMULATE_GRAD_BATCHES", default=1))


class DefaultTrainer(TrainerBase):
    """A trainer with detectron2's default training logic, built from a config.

    Construction: build the model, optimizer and train loader (``build_*`` class methods), wrap the model with
    ``create_ddp_model(broadcast_buffers=False)``, create a ``SimpleTrainer`` (``AMPTrainer`` with
    ``SOLVER.AMP.ENABLED``), the LR scheduler and a ``DetectionCheckpointer`` on ``OUTPUT_DIR``, then register
    ``build_hooks()``. Call :meth:`resume_or_load` then :meth:`train`.

    With a detectron2 ``CfgNode`` (``detectron2.config.get_cfg()``, model-zoo files included) the model, optimizer,
    LR scheduler, train/test loaders and checkpointer are detectron2's (``build_model``, ``build_optimizer``,
    ``build_lr_scheduler``, ``build_detection_train_loader``/``build_detection_test_loader``,
    ``DetectionCheckpointer``), detectron2's logger is set up as its trainer does, and ``MODEL.DEVICE`` selects
    Lightning's accelerator. The hooks, loop and writers are d2lightning's, with detectron2's iterations, file
    names and metrics.

    d2lightning adds, for safe output folders: the main process locks ``OUTPUT_DIR`` from construction to the
    end of :meth:`train` (a second training there is refused; see :mod:`d2lightning.engine.recipes.output_dir`) and
    deletes the temporary files of killed saves; a run starting at iteration 0 warns before overwriting an
    earlier run's checkpoints; and a signal hook is registered last — ``SigtermCheckpoint`` (SIGTERM: checkpoint,
    exit 143), or ``SlurmPreemption`` in a Slurm job, with Lightning's ``SLURMEnvironment(auto_requeue=False)``.
    Settings this machine cannot honour (``MODEL.DEVICE``, ``LIGHTNING.PRECISION``, ``SOLVER.IMS_PER_BATCH``)
    are refused before anything is built (:mod:`d2lightning.engine.recipes.startup_checks`).

    Args:
        cfg: a config from :func:`d2lightning.config.get_cfg` (detectron2's key names), or a detectron2
            ``CfgNode``.

    Raises:
        ImportError: for a detectron2 ``CfgNode`` when detectron2 is not installed.
        OutputDirInUseError: when another live run trains into ``OUTPUT_DIR``.
        ValueError: naming the key, for a setting this machine or run cannot honour.

    Attributes:
        cfg, model, optimizer, data_loader, scheduler, checkpointer, start_iter, max_iter: as detectron2's.

    Example::

        trainer = DefaultTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        from_detectron2 = _compat.is_detectron2_cfg(cfg)
        if from_detectron2:
            _compat.require_detectron2("DefaultTrainer with a detectron2 CfgNode")
            _compat.setup_detectron2_logger()
        if not logging.getLogger("d2lightning").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        check_trainable(cfg, comm.get_world_size())
        main = comm.is_main_process() and bool(cfg.OUTPUT_DIR)
        self._output_lock = claim_output_dir(cfg.OUTPUT_DIR) if main else None
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        sharding = None if from_detectron2 else sharding_from_cfg(cfg)
        if sharding is None:  # LIGHTNING.STRATEGY fsdp: FSDP shards the bare model when the fit starts
            model = create_ddp_model(model, broadcast_buffers=False)
        accumulate = _accumulate_grad_batches(cfg)
        if cfg.SOLVER.AMP.ENABLED:
            on_cpu = next(model.parameters()).device.type == "cpu"
            # float16 autocast on CPU is slow and unsupported for many ops: bfloat16 there
            self._trainer: SimpleTrainer = AMPTrainer(
                model,
                data_loader,
                optimizer,
                precision=torch.bfloat16 if on_cpu else torch.float16,
                accumulate_grad_batches=accumulate,
            )
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer, accumulate_grad_batches=accumulate)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        checkpointer_class = _compat.detectron2_builder("checkpointer") if from_detectron2 else DetectionCheckpointer
        self.checkpointer = checkpointer_class(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.lightning_kwargs = (
            _compat.lightning_kwargs_from_detectron2_cfg(cfg) if from_detectron2 else lightning_kwargs_from_cfg(cfg)
        )
        self.sharding = sharding
        self.register_hooks(self.build_hooks())
        self.register_hooks(lightning_callbacks_from_cfg(cfg))  # LIGHTNING.CALLBACKS, progress bar
        self.register_hooks([termination_hook()])  # last: stops after every other hook's after_step

    def resume_or_load(self, resume: bool = True) -> None:
        """Resume from ``OUTPUT_DIR``'s last checkpoint if ``resume`` and one exists, else load ``MODEL.WEIGHTS``.

        Resuming restores the model, optimizer, scheduler, hook states and iteration, and training continues at
        the iteration after the saved one; ``MODEL.WEIGHTS`` is then ignored. Otherwise only the weights are
        loaded and training starts at 0. Asked to resume from an ``OUTPUT_DIR`` without a checkpoint, it says so
        in one log line and starts at 0 (from ``MODEL.WEIGHTS`` if set). Starting at 0 in an ``OUTPUT_DIR`` that
        holds checkpoints logs a warning naming those it will overwrite.

        Raises:
            FileNotFoundError / CorruptCheckpointError: naming ``MODEL.WEIGHTS`` when that file is missing or
                damaged; when resuming, only if no checkpoint of ``OUTPUT_DIR`` can be read.
        """
        weights = self.cfg.MODEL.WEIGHTS
        resuming = resume and self.checkpointer.has_checkpoint()
        if not resuming and self._output_lock is not None:
            warn_before_overwriting(self.cfg.OUTPUT_DIR, self.cfg.SOLVER.CHECKPOINT_PERIOD, self.max_iter)
        if resume and not resuming:
            source = f"from MODEL.WEIGHTS={weights}" if weights else "from scratch"
            logger.info(f"No checkpoint found in {self.cfg.OUTPUT_DIR}: training starts at iteration 0, {source}")
            if not weights:
                return  # nothing to load: the checkpointer would only log "no checkpoint" once more
        try:
            self.checkpointer.resume_or_load(weights, resume=resume)
        except (FileNotFoundError, CorruptCheckpointError) as e:
            if resuming:
                raise
            raise type(e)(f"MODEL.WEIGHTS={weights!r}: {e}") from e
        if resuming:
            self.start_iter = self.iter + 1  # the checkpoint stores the iteration that just finished
            self._seek_precise_bn_loader()

    def _seek_precise_bn_loader(self) -> None:
        """Let PreciseBN continue its batch stream where the interrupted run left it (d2lightning's exact resume).

        PreciseBN draws ``TEST.PRECISE_BN.NUM_ITER`` batches after every ``TEST.EVAL_PERIOD``-th iteration; the
        iterations before ``start_iter`` used ``start_iter // EVAL_PERIOD`` such updates. The built-in train
        loader can skip them (``set_start_iteration``); other loaders restart, as in detectron2.
        """
        seek = getattr(getattr(self, "_precise_bn_loader", None), "set_start_iteration", None)
        period = self.cfg.TEST.EVAL_PERIOD
        if callable(seek) and period > 0:
            seek((self.start_iter // period) * self.cfg.TEST.PRECISE_BN.NUM_ITER)

    def build_hooks(self) -> list[Any]:
        """detectron2's default hooks, in this order: IterationTimer, LRScheduler, PreciseBN (if enabled and the
        model has BN in training mode), PeriodicCheckpointer (main process), EvalHook (every rank), PeriodicWriter
        (main process). PreciseBN comes first so its statistics are saved; the checkpoint is written before
        evaluation (which may fail); the writer runs last so it sees the evaluation results. The checkpoints hold
        every rank's RNG states and data-stream positions all the same: the fit's run gathers them on every rank at
        the iterations the main process saves.
        """
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.DATALOADER.NUM_WORKERS = 0  # save some memory and time for PreciseBN
        precise_bn = None
        if cfg.TEST.PRECISE_BN.ENABLED and get_bn_modules(self.model):
            self._precise_bn_loader = self.build_train_loader(cfg)
            precise_bn = hooks.PreciseBN(
                cfg.TEST.EVAL_PERIOD, self.model, self._precise_bn_loader, cfg.TEST.PRECISE_BN.NUM_ITER
            )
        ret: list[Any] = [hooks.IterationTimer(), hooks.LRScheduler(), precise_bn]
        if comm.is_main_process():
            max_to_keep = cfg.SOLVER.get("CHECKPOINT_MAX_TO_KEEP", 0) or None
            ret.append(
                hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, max_to_keep=max_to_keep)
            )

        def test_and_save_results() -> Any:
            self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=20))
        return ret

    def build_writers(self) -> list[EventWriter]:
        """``default_writers(OUTPUT_DIR, max_iter)``: console printer, ``metrics.json``, TensorBoard."""
        return default_writers(self.cfg.OUTPUT_DIR, self.max_iter)

    def train(self) -> dict[str, Any] | None:  # type: ignore[override]
        """Run training from ``start_iter`` to ``max_iter``.

        Returns:
            The last evaluation results (a dict), or None when no evaluation ran (detectron2 returns them only
            with ``TEST.EXPECTED_RESULTS``).

        Raises:
            RuntimeError: with ``TEST.EXPECTED_RESULTS`` on the main process, when no evaluation ran.
            TrainingPreempted: (a ``SystemExit``, code 143) after SIGTERM, once the checkpoint is written; see
                :class:`~d2lightning.engine.recipes.termination.SigtermCheckpoint`.
            SystemExit: (code 1) when the results do not match ``TEST.EXPECTED_RESULTS`` on the main process,
                as detectron2's ``verify_results``; the mismatches are logged first.
        """
        if self._output_lock is not None:
            self._output_lock.acquire()  # again, when an earlier train() released it
        try:
            super().train(self.start_iter, self.max_iter)
        finally:
            if self._output_lock is not None:
                self._output_lock.release()
        results = getattr(self, "_last_eval_results", None)
        if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process():
            if results is None:
                raise RuntimeError("No evaluation results obtained during training!")
            if not verify_results(self.cfg, results):
                sys.exit(1)
        return results

    def run_step(self) -> None:
        self._trainer.iter = self.iter
        self._trainer.run_step()

    # ------------------------------------------------------------ the run protocol: the inner trainer runs the step
    def begin_run(self, binding: RunBinding) -> None:
        """The hooks and the backend are this trainer's; the data, and the step, the inner trainer's."""
        self._bind(replace(binding, batches=None, convert=None))
        self._trainer.begin_run(replace(binding, hooks=[]))

    def end_run(self) -> None:
        self._trainer.end_run()
        super().end_run()

    def _resume_data(self, start_iter: int, state: Mapping[str, Any] | None, checkpoint_has_data: bool) -> None:
        self._trainer._resume_data(start_iter, state, checkpoint_has_data)  # the inner trainer reads the data

    def _data_stream_state(self) -> Mapping[str, Any] | None:
        return self._trainer._data_stream_state()

    def check_trainer_options(self, pl_trainer: Any) -> None:
        self._trainer.check_trainer_options(pl_trainer)

    def state_dict(self) -> dict[str, Any]:
        ret = super().state_dict()
        inner = self._trainer.state_dict()
        inner.pop("rng", None)  # saved once, at the top
        inner.pop("data", None)
        ret["_trainer"] = inner
        return ret

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._trainer.load_state_dict(state_dict["_trainer"])

    # ------------------------------------------------------------ factories (override in subclasses)
    @classmethod
    def build_model(cls, cfg: Any) -> torch.nn.Module:
        """``d2lightning.modeling.build_model(cfg)`` (detectron2's for a detectron2 config), logged."""
        from d2lightning.modeling import build_model

        model = _builder(cfg, "build_model", build_model)(cfg)
        logger.info(f"Model:\n{model}")
        return model

    @classmethod
    def build_optimizer(cls, cfg: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
        """``d2lightning.solver.build_optimizer(cfg, model)`` (detectron2's for a detectron2 config)."""
        from d2lightning.solver import build_optimizer

        return _builder(cfg, "build_optimizer", build_optimizer)(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: Any, optimizer: torch.optim.Optimizer) -> Any:
        """``d2lightning.solver.build_lr_scheduler(cfg, optimizer)`` (detectron2's for a detectron2 config)."""
        from d2lightning.solver import build_lr_scheduler

        return _builder(cfg, "build_lr_scheduler", build_lr_scheduler)(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg: Any) -> Any:
        """``d2lightning.data.build_detection_train_loader(cfg)`` (detectron2's for a detectron2 config).

        The loader is infinite and sharded by rank.
        """
        from d2lightning.data import build_detection_train_loader

        return _builder(cfg, "build_train_loader", build_detection_train_loader)(cfg)

    @classmethod
    def build_test_loader(cls, cfg: Any, dataset_name: str) -> Any:
        """``d2lightning.data.build_detection_test_loader(cfg, dataset_name)`` (detectron2's for a detectron2 cfg)."""
        from d2lightning.data import build_detection_test_loader

        return _builder(cfg, "build_test_loader", build_detection_test_loader)(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg: Any, dataset_name: str) -> DatasetEvaluator:
        """Override to return the evaluator of ``dataset_name`` (detectron2 raises here too)."""
        raise NotImplementedError(
            "If you want DefaultTrainer to automatically run evaluation, please implement `build_evaluator()` in "
            "subclasses (see train_net.py for example). Alternatively, you can call evaluation functions yourself "
            "(see Colab balloon tutorial for example)."
        )

    @classmethod
    def test(
        cls, cfg: Any, model: torch.nn.Module, evaluators: DatasetEvaluator | Sequence[DatasetEvaluator] | None = None
    ) -> dict[str, Any]:
        """Evaluate ``model`` on every dataset of ``DATASETS.TEST`` (on every rank).

        Args:
            evaluators: one evaluator, or one per test dataset; None calls :meth:`build_evaluator`.

        Returns:
            ``{dataset_name: results}``, or the results alone when there is a single dataset.

        Raises:
            ValueError: when the number of evaluators differs from ``len(DATASETS.TEST)``, or when an evaluator's
                results hold a value that is not a number (detectron2 fails later, formatting it for the log).
            TypeError: when an evaluator's results are not a dict on the main process.
        """
        if isinstance(evaluators, DatasetEvaluator) or callable(getattr(evaluators, "process", None)):
            evaluators = [evaluators]  # type: ignore[list-item]  # one evaluator (detectron2's too), not a list
        if evaluators is not None and len(cfg.DATASETS.TEST) != len(evaluators):
            raise ValueError(
                f"{len(cfg.DATASETS.TEST)} test datasets (DATASETS.TEST) but {len(evaluators)} evaluators given"
            )
        results: OrderedDict[str, Any] = OrderedDict()
        for idx, dataset_name in enumerate(cfg.DATASETS.TEST):
            data_loader = cls.build_test_loader(cfg, dataset_name)
            if evaluators is not None:
                evaluator = evaluators[idx]
            else:
                try:
                    evaluator = cls.build_evaluator(cfg, dataset_name)
                except NotImplementedError:
                    logger.warning(
                        "No evaluator found. Use `DefaultTrainer.test(evaluators=)`, "
                        "or implement its `build_evaluator` method."
                    )
                    results[dataset_name] = {}
                    continue
            results_i = inference_on_dataset(model, data_loader, evaluator)
            results[dataset_name] = results_i
            if comm.is_main_process():
                if not isinstance(results_i, Mapping):
                    raise TypeError(
                        f"Evaluator must return a dict on the main process. Got {results_i!r} instead "
                        f"(dataset {dataset_name})."
                    )
                _check_numbers(results_i, dataset_name)
                logger.info(f"Evaluation results for {dataset_name} in csv format:")
                print_csv_format(results_i)
        if len(results) == 1:
            return next(iter(results.values()))
        return results

    @staticmethod
    def auto_scale_workers(cfg: Any, num_workers: int) -> Any:
        """Scale batch size, LR, iterations and periods from ``SOLVER.REFERENCE_WORLD_SIZE`` to ``num_workers``.

        A no-op when ``REFERENCE_WORLD_SIZE`` is 0 or equals ``num_workers``; otherwise returns a scaled clone:
        ``IMS_PER_BATCH`` and ``BASE_LR`` times ``s = num_workers / reference``; ``MAX_ITER``, ``WARMUP_ITERS``,
        ``STEPS``, ``TEST.EVAL_PERIOD`` and ``CHECKPOINT_PERIOD`` divided by it (rounded).

        Raises:
            ValueError: when ``IMS_PER_BATCH`` is not divisible by ``REFERENCE_WORLD_SIZE``.
        """
        old_world_size = cfg.SOLVER.REFERENCE_WORLD_SIZE
        if old_world_size == 0 or old_world_size == num_workers:
            return cfg
        cfg = cfg.clone()
        frozen = cfg.is_frozen()
        cfg.defrost()
        if cfg.SOLVER.IMS_PER_BATCH % old_world_size != 0:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} must be divisible by "
                f"SOLVER.REFERENCE_WORLD_SIZE={old_world_size}"
            )
        scale = num_workers / old_world_size
        cfg.SOLVER.IMS_PER_BATCH = bs = round(cfg.SOLVER.IMS_PER_BATCH * scale)
        cfg.SOLVER.BASE_LR = lr = cfg.SOLVER.BASE_LR * scale
        cfg.SOLVER.MAX_ITER = max_iter = round(cfg.SOLVER.MAX_ITER / scale)
        cfg.SOLVER.WARMUP_ITERS = warmup_iter = round(cfg.SOLVER.WARMUP_ITERS / scale)
        cfg.SOLVER.STEPS = tuple(round(s / scale) for s in cfg.SOLVER.STEPS)
        cfg.TEST.EVAL_PERIOD = round(cfg.TEST.EVAL_PERIOD / scale)
        cfg.SOLVER.CHECKPOINT_PERIOD = round(cfg.SOLVER.CHECKPOINT_PERIOD / scale)
        cfg.SOLVER.REFERENCE_WORLD_SIZE = num_workers
        logger.info(
            f"Auto-scaling the config to batch_size={bs}, learning_rate={lr}, max_iter={max_iter}, "
            f"warmup={warmup_iter}."
        )
        if frozen:
            cfg.freeze()
        return cfg

    # detectron2 exposes the inner trainer's attributes on DefaultTrainer (read and write)
    @property
    def model(self) -> torch.nn.Module:
        return self._trainer.model

    @model.setter
    def model(self, value: torch.nn.Module) -> None:
        self._trainer.model = value

    @property
    def data_loader(self) -> Any:
        return self._trainer.data_loader

    @data_loader.setter
    def data_loader(self, value: Any) -> None:
        self._trainer.data_loader = value

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._trainer.optimizer

    @optimizer.setter
    def optimizer(self, value: torch.optim.Optimizer) -> None:
        self._trainer.optimizer = value

    @property
    def accumulate_grad_batches(self) -> int:
        """The inner trainer's micro-batches per iteration (``LIGHTNING.ACCUMULATE_GRAD_BATCHES``; d2lightning only)."""
        return self._trainer.accumulate_grad_batches

    @accumulate_grad_batches.setter
    def accumulate_grad_batches(self, value: int) -> None:
        self._trainer.accumulate_grad_batches = value


def _check_numbers(results: Mapping[str, Any], dataset_name: str) -> None:
    """Raise a ValueError naming the first entry of ``results`` (flattened with "/") that ``float()`` refuses."""
    for key, value in flatten_results_dict(results).items():
        try:
            float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"The evaluator of {dataset_name} should return a nested dict of float. Got '{key}: {value}' instead."
            ) from None


def _builder(cfg: Any, role: str, own: Any) -> Any:
    """``own``, or detectron2's builder for ``role`` when ``cfg`` is a detectron2 ``CfgNode``."""
    return _compat.detectron2_builder(role) if _compat.is_detectron2_cfg(cfg) else own

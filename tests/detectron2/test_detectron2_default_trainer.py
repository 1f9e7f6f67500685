"""``d2lightning.engine.DefaultTrainer`` built from a detectron2 ``CfgNode``, and detectron2's ``train_net.py``.

With detectron2 installed: detectron2's model-zoo Faster R-CNN config, shrunk (``tests.helpers.detectron2_runs.rcnn_cfg``:
ResNet-18, 2 classes, 64-pixel images, 4 iterations, a checkpoint every 2), trains on a synthetic dataset
registered in detectron2's ``DatasetCatalog`` (PNG files written by the test, nothing downloaded). The reference
is detectron2's own ``tools/train_net.py`` run on the same config and seed: d2lightning must write the same files
and the same ``metrics.json`` (losses, lr, RPN/ROI statistics and COCO AP, bit for bit; only measured times
differ). The error and our-own-config tests run without detectron2.
"""

from __future__ import annotations

import os
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from d2lightning import _compat
from d2lightning.engine import DefaultTrainer
from tests.helpers import DEMO_CONFIG
from tests.helpers.detectron2_runs import (
    RCNN_ZOO_CONFIG,
    TRAIN_NET_MISSING,
    metrics_lines,
    needs_detectron2_tool,
    rcnn_cfg,
    rcnn_train_opts,
    requires_detectron2,
    run_train_net,
    synthetic_datasets,
    train_net_path,
)
from tests.helpers.logs import detectron2_result_lines, restored_loggers

TRAIN, VAL = "d2l_synth_train", "d2l_synth_val"
#: what one run writes into OUTPUT_DIR (default_setup adds config.yaml and log.txt)
RUN_FILES = [
    "events.out.tfevents", "inference", "last_checkpoint", "metrics.json",
    "model_0000001.pth", "model_0000003.pth", "model_final.pth",
]  # fmt: skip
AP_KEYS = ["bbox/AP", "bbox/AP-bar", "bbox/AP-square", "bbox/AP50", "bbox/AP75", "bbox/APl", "bbox/APm", "bbox/APs"]
needs_train_net = needs_detectron2_tool("train_net.py")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if not _compat.detectron2_available():
        pytest.skip(_compat.DETECTRON2_MISSING_REASON)
    with synthetic_datasets(tmp_path_factory.mktemp("images"), **{TRAIN: (4, 0), VAL: (3, 1)}):
        yield


def _argv(output_dir: Path, *extra: str) -> list[str]:
    from detectron2 import model_zoo

    return [
        "--config-file", model_zoo.get_config_file(RCNN_ZOO_CONFIG), *extra, *rcnn_train_opts(output_dir, TRAIN, VAL),
    ]  # fmt: skip


def _files(output_dir: Path) -> list[str]:
    return sorted("events.out.tfevents" if f.startswith("events.out.tfevents") else f for f in os.listdir(output_dir))


@pytest.fixture(scope="module")
def detectron2_run(datasets: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUTPUT_DIR of detectron2's unmodified train_net.py on the shrunk config."""
    if train_net_path() is None:
        pytest.skip(TRAIN_NET_MISSING)
    output_dir = tmp_path_factory.mktemp("detectron2_run")
    with restored_loggers():  # later runs must not log into this run's log.txt
        run_train_net(_argv(output_dir), d2lightning_engine=False)
    return output_dir


# ---------------------------------------------------------------- with a real detectron2
@requires_detectron2
@needs_train_net
@pytest.mark.slow
def test_detectron2_reference_run_is_sane(detectron2_run: Path) -> None:
    assert _files(detectron2_run) == sorted([*RUN_FILES, "config.yaml", "log.txt"])
    lines = metrics_lines(detectron2_run / "metrics.json")
    # PeriodicWriter(period=20): one write after the last iteration (3), then EvalHook's results at max_iter (4)
    assert [d["iteration"] for d in lines] == [3, 4]
    assert sorted(lines[1]) == [*AP_KEYS, "iteration"]
    assert lines[0]["lr"] == pytest.approx(0.001)  # BASE_LR 0.01, STEPS (3,), GAMMA 0.1


@requires_detectron2
@needs_train_net
@pytest.mark.slow
def test_train_net_runs_on_d2lightning_with_only_its_import_changed(detectron2_run: Path, tmp_path: Path) -> None:
    output_dir = tmp_path / "run"
    with restored_loggers():  # the --eval-only run below must not log into this run's log.txt
        run_train_net(_argv(output_dir), d2lightning_engine=True)
    assert _files(output_dir) == _files(detectron2_run)
    assert metrics_lines(output_dir / "metrics.json") == metrics_lines(detectron2_run / "metrics.json")
    # what detectron2's modules log reaches log.txt: the model printout, the evaluation tables and copypaste lines
    expected = detectron2_result_lines(detectron2_run / "log.txt")
    assert expected[0].startswith("Model:\n") and any(line.startswith("copypaste: ") for line in expected)
    assert detectron2_result_lines(output_dir / "log.txt") == expected
    config = (output_dir / "config.yaml").read_text().replace(str(output_dir), "<OUTPUT_DIR>")
    assert config == (detectron2_run / "config.yaml").read_text().replace(str(detectron2_run), "<OUTPUT_DIR>")

    # --eval-only: detectron2's DetectionCheckpointer loads the d2lightning run's model_final.pth into a new
    # model, and Trainer.test (d2lightning's) predicts exactly what the evaluation at the end of training did
    eval_dir = tmp_path / "eval"
    weights = str(output_dir / "model_final.pth")
    run_train_net([*_argv(eval_dir, "--eval-only"), "MODEL.WEIGHTS", weights], d2lightning_engine=True)
    predictions = "inference/coco_instances_results.json"
    assert (eval_dir / predictions).read_text() == (output_dir / predictions).read_text()


@requires_detectron2
@needs_train_net
@pytest.mark.slow
def test_default_trainer_builds_with_detectron2s_factories(detectron2_run: Path, tmp_path: Path) -> None:
    from detectron2.evaluation import COCOEvaluator
    from lightning.pytorch.accelerators import CPUAccelerator

    from d2lightning.engine import hooks
    from d2lightning.utils.env import seed_all_rng

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg: Any, dataset_name: str) -> Any:
            return COCOEvaluator(dataset_name, output_dir=os.path.join(cfg.OUTPUT_DIR, "inference"))

    seed_all_rng(3)  # what default_setup does with SEED 3
    trainer = Trainer(rcnn_cfg(tmp_path, TRAIN, VAL))
    names = {
        "model": trainer.model,
        "optimizer": trainer.optimizer,
        "scheduler": trainer.scheduler,
        "checkpointer": trainer.checkpointer,
        "data_loader": trainer.data_loader,
    }
    assert {k: f"{type(v).__module__}.{type(v).__qualname__}" for k, v in names.items()} == {
        "model": "detectron2.modeling.meta_arch.rcnn.GeneralizedRCNN",
        "optimizer": "torch.optim.sgd.SGD",
        "scheduler": "detectron2.solver.lr_scheduler.LRMultiplier",
        "checkpointer": "detectron2.checkpoint.detection_checkpoint.DetectionCheckpointer",
        "data_loader": "detectron2.data.common.AspectRatioGroupedDataset",
    }
    assert [f"{type(h).__module__.split('.')[0]}.{type(h).__name__}" for h in trainer._hooks] == [
        "d2lightning.IterationTimer", "d2lightning.LRScheduler", "d2lightning.PeriodicCheckpointer",
        "d2lightning.EvalHook", "d2lightning.PeriodicWriter", "d2lightning.SigtermCheckpoint",
    ]  # fmt: skip
    assert trainer.lightning_kwargs == {"accelerator": "cpu"}  # from MODEL.DEVICE "cpu"
    accelerators: list[Any] = []
    trainer.register_hooks([hooks.CallbackHook(before_train=lambda t: accelerators.append(t.pl_trainer))])
    trainer.resume_or_load(resume=False)
    results = trainer.train()

    assert isinstance(accelerators[0].accelerator, CPUAccelerator)
    assert _files(tmp_path) == RUN_FILES
    expected = metrics_lines(detectron2_run / "metrics.json")
    assert metrics_lines(tmp_path / "metrics.json") == expected
    eval_line = {k: v for k, v in expected[1].items() if k != "iteration"}
    assert {f"bbox/{k}": "NaN" if v != v else v for k, v in results["bbox"].items()} == eval_line
    # DefaultTrainer.test takes a single detectron2 evaluator too (not only a list of them)
    alone = Trainer.test(trainer.cfg, trainer.model, COCOEvaluator(VAL, output_dir=str(tmp_path / "again")))
    assert {f"bbox/{k}": "NaN" if v != v else v for k, v in alone["bbox"].items()} == eval_line


@requires_detectron2
def test_detectron2_builders_are_detectron2s_own() -> None:
    import detectron2.checkpoint
    import detectron2.data
    import detectron2.modeling
    import detectron2.solver

    assert {role: _compat.detectron2_builder(role) for role in _compat.DETECTRON2_BUILDERS} == {
        "build_model": detectron2.modeling.build_model,
        "build_optimizer": detectron2.solver.build_optimizer,
        "build_lr_scheduler": detectron2.solver.build_lr_scheduler,
        "build_train_loader": detectron2.data.build_detection_train_loader,
        "build_test_loader": detectron2.data.build_detection_test_loader,
        "checkpointer": detectron2.checkpoint.DetectionCheckpointer,
    }


# ---------------------------------------------------------------- without detectron2
def _stand_in_cfg_class() -> type:
    """A class named and moduled like detectron2's yacs ``CfgNode`` (no detectron2 needed)."""
    return type("CfgNode", (dict,), {"__module__": "detectron2.config.config"})


def test_detectron2_cfgs_are_recognised_by_class() -> None:
    stand_in = _stand_in_cfg_class()
    subclass = type("ProjectCfg", (stand_in,), {"__module__": "my_project.config"})
    from d2lightning.config import get_cfg

    assert [_compat.is_detectron2_cfg(c) for c in (stand_in(), subclass(), get_cfg(), {}, None)] == [
        True, True, False, False, False,
    ]  # fmt: skip


def test_a_detectron2_cfg_without_detectron2_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compat, "detectron2_available", lambda: False)  # also where detectron2 is installed
    with pytest.raises(
        ImportError, match=r"^DefaultTrainer with a detectron2 CfgNode needs detectron2, which is not installed: see "
    ):
        DefaultTrainer(_stand_in_cfg_class()())
    with pytest.raises(ImportError, match=r"^DefaultTrainer.build_model with a detectron2 CfgNode needs detectron2"):
        DefaultTrainer.build_model(_stand_in_cfg_class()())


def test_an_unknown_builder_role_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"role must be one of \['build_lr_scheduler', .*got 'build_hooks'"):
        _compat.detectron2_builder("build_hooks")


@pytest.mark.parametrize("device, accelerator", [("cpu", "cpu"), ("cuda", "gpu"), ("cuda:1", "gpu"), ("mps", "mps")])
def test_model_device_selects_the_lightning_accelerator(device: str, accelerator: str) -> None:
    cfg = types.SimpleNamespace(MODEL=types.SimpleNamespace(DEVICE=device))
    assert _compat.lightning_kwargs_from_detectron2_cfg(cfg) == {"accelerator": accelerator}


def test_an_unknown_model_device_is_rejected() -> None:
    cfg = types.SimpleNamespace(MODEL=types.SimpleNamespace(DEVICE="tpu"))
    with pytest.raises(ValueError, match=r"MODEL.DEVICE='tpu' has no Lightning accelerator; accepted: 'cpu', 'cuda'"):
        _compat.lightning_kwargs_from_detectron2_cfg(cfg)


def test_our_own_config_never_asks_for_detectron2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from d2lightning.checkpoint import DetectionCheckpointer
    from d2lightning.config import get_cfg
    from d2lightning.modeling.meta_arch.shapes_detector import ShapesDetector

    def refuse(role: str) -> Any:
        raise AssertionError(f"detectron2's {role} asked for with a d2lightning config")

    monkeypatch.setattr(_compat, "detectron2_builder", refuse)
    cfg = get_cfg()
    cfg.merge_from_file(str(DEMO_CONFIG))
    cfg.OUTPUT_DIR = str(tmp_path)
    with restored_loggers():
        trainer = DefaultTrainer(cfg)
    assert type(trainer.model) is ShapesDetector
    assert type(trainer.checkpointer) is DetectionCheckpointer
    assert trainer.lightning_kwargs["precision"] == cfg.LIGHTNING.PRECISION

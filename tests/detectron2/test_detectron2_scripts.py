"""detectron2's ``tools/plain_train_net.py`` and ``tools/lazyconfig_train_net.py`` on d2lightning, side by side with
detectron2's own runs (``tools/train_net.py`` is in ``test_detectron2_default_trainer.py``).

Each script runs twice on the same shrunk config, seed and synthetic dataset (PNG files written by the test,
nothing downloaded): unmodified, and with only its ``detectron2.engine`` imports (for ``plain_train_net.py`` also
``detectron2.utils.events``) pointed at d2lightning. The d2lightning run must write the same files and the same
``metrics.json`` — every value but the measured times (``time``, ``data_time``, ``rank_data_time``,
``eta_seconds``, dropped by ``tests.helpers.detectron2_runs.metrics_lines``) equal, bit for bit — and its ``log.txt`` must hold
what detectron2's modules log: the model printout and the evaluation results.

``lazyconfig_train_net.py`` trains detectron2's own Mask R-CNN R50-FPN LazyConfig
(``configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py``), made CPU-sized by command-line overrides only.
The same config also trains with ``d2lightning train`` (d2lightning's own LazyConfig, instantiate, checkpointer and
loop) to the same metrics.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.detectron2_runs import (
    DETECTRON2_MARKS,
    DETECTRON2_TOOLS_VARIABLES,
    detectron2_tool,
    metrics_lines,
    needs_detectron2_tool,
    rcnn_train_opts,
    run_detectron2_tool,
    synthetic_datasets,
)
from tests.helpers.logs import detectron2_result_lines, restored_loggers

pytestmark = [*DETECTRON2_MARKS, pytest.mark.slow]

TRAIN, VAL = "d2l_scripts_train", "d2l_scripts_val"
ENGINE = {"from detectron2.engine import": "from d2lightning.engine import"}
PLAIN_IMPORTS = {**ENGINE, "from detectron2.utils.events import": "from d2lightning.utils.events import"}
LAZY_IMPORTS = {
    **ENGINE,
    "from detectron2.engine.defaults import create_ddp_model": "from d2lightning.engine.defaults import create_ddp_model",
}
MASK_RCNN = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py"


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with synthetic_datasets(tmp_path_factory.mktemp("images"), masks=True, **{TRAIN: (4, 0), VAL: (3, 1)}):
        yield


def _files(output_dir: Path) -> list[str]:
    return sorted("events.out.tfevents" if f.startswith("events.out.tfevents") else f for f in os.listdir(output_dir))


def _run(tool: str, argv: list[str], imports: dict[str, str] | None) -> None:
    with restored_loggers():  # each run sets up the loggers of its own output folder
        run_detectron2_tool(tool, argv, imports)


def _assert_same_run(ours: Path, theirs: Path) -> None:
    assert _files(ours) == _files(theirs)
    assert metrics_lines(ours / "metrics.json") == metrics_lines(theirs / "metrics.json")
    expected = detectron2_result_lines(theirs / "log.txt")
    assert expected[0].startswith("Model:\n") and any(line.startswith("copypaste: ") for line in expected)
    assert detectron2_result_lines(ours / "log.txt") == expected


# ---------------------------------------------------------------- plain_train_net.py
def _plain_argv(output_dir: Path) -> list[str]:
    from detectron2 import model_zoo

    opts = rcnn_train_opts(output_dir, TRAIN, VAL, max_iter=8, period=4)  # writers first write after iteration 5
    return ["--config-file", model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"), *opts]


@needs_detectron2_tool("plain_train_net.py")
def test_plain_train_net_runs_on_d2lightning_with_only_its_imports_changed(datasets: None, tmp_path: Path) -> None:
    theirs, ours = tmp_path / "detectron2", tmp_path / "d2lightning"
    _run("plain_train_net.py", _plain_argv(theirs), None)
    _run("plain_train_net.py", _plain_argv(ours), PLAIN_IMPORTS)

    lines = metrics_lines(theirs / "metrics.json")
    assert [d["iteration"] for d in lines] == [7]  # plain_train_net writes after iteration 5, at 19, 39... and last
    assert _files(theirs) == [
        "config.yaml", "events.out.tfevents", "inference", "last_checkpoint", "log.txt", "metrics.json",
        "model_0000003.pth", "model_0000007.pth", "model_final.pth",
    ]  # fmt: skip
    _assert_same_run(ours, theirs)
    config = (ours / "config.yaml").read_text().replace(str(ours), "<OUTPUT_DIR>")
    assert config == (theirs / "config.yaml").read_text().replace(str(theirs), "<OUTPUT_DIR>")


# ---------------------------------------------------------------- lazyconfig_train_net.py
def _lazy_overrides(output_dir: Path, new: str = "") -> list[str]:
    """detectron2's Mask R-CNN R50-FPN LazyConfig at CPU size: 64-pixel images, 2 per batch, 4 iterations, BatchNorm
    instead of FrozenBN (without pretrained weights, 50 frozen-BN layers diverge at once), a small learning rate.

    ``new`` prefixes the keys detectron2's config lacks ("+" for d2lightning's LazyConfig, which refuses new keys
    otherwise; detectron2's adds them silently).
    """
    return [
        f"train.output_dir={output_dir}",
        "train.init_checkpoint=",  # no ImageNet download: random initialisation
        "train.device=cpu",
        "train.max_iter=4",
        "train.eval_period=0",
        "train.checkpointer.period=2",
        f"{new}train.seed=3",
        f"{new}dataloader.evaluator.output_dir={output_dir / 'inference'}",
        "model.backbone.bottom_up.stem.norm=BN",
        "model.backbone.bottom_up.stages.norm=BN",
        f"dataloader.train.dataset.names={TRAIN}",
        f"dataloader.test.dataset.names={VAL}",
        "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        "dataloader.train.mapper.augmentations.0.short_edge_length=[64]",
        "dataloader.train.mapper.augmentations.0.max_size=128",
        "dataloader.test.mapper.augmentations.0.short_edge_length=64",
        "dataloader.test.mapper.augmentations.0.max_size=128",
        "model.roi_heads.num_classes=2",
        "model.roi_heads.batch_size_per_image=64",
        "model.proposal_generator.batch_size_per_image=64",
        "model.proposal_generator.pre_nms_topk=[256,256]",
        "model.proposal_generator.post_nms_topk=[64,64]",
        "model.roi_heads.box_predictor.test_score_thresh=0.0",
        "optimizer.lr=0.0005",
    ]


def _mask_rcnn_config() -> str:
    source = detectron2_tool("lazyconfig_train_net.py")
    assert source is not None
    return str(source.parents[1] / "configs" / MASK_RCNN)


@pytest.fixture(scope="module")
def detectron2_lazy_run(datasets: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUTPUT_DIR of detectron2's unmodified lazyconfig_train_net.py on the CPU-sized Mask R-CNN LazyConfig."""
    if detectron2_tool("lazyconfig_train_net.py") is None:
        pytest.skip(f"detectron2's tools/lazyconfig_train_net.py is not available (set {DETECTRON2_TOOLS_VARIABLES})")
    output_dir = tmp_path_factory.mktemp("detectron2_lazy")
    _run("lazyconfig_train_net.py", ["--config-file", _mask_rcnn_config(), *_lazy_overrides(output_dir)], None)
    return output_dir


MASK_RCNN_FILES = [
    "config.yaml", "events.out.tfevents", "inference", "last_checkpoint", "log.txt", "metrics.json",
    "model_0000001.pth", "model_0000003.pth", "model_final.pth",
]  # fmt: skip


@needs_detectron2_tool("lazyconfig_train_net.py")
def test_lazyconfig_train_net_runs_on_d2lightning_with_only_its_imports_changed(
    detectron2_lazy_run: Path, tmp_path: Path
) -> None:
    theirs = detectron2_lazy_run
    lines = metrics_lines(theirs / "metrics.json")
    assert [d["iteration"] for d in lines] == [3, 4]  # the writer after the last iteration, then EvalHook's results
    assert {"bbox/AP", "segm/AP", "bbox/AP-bar", "segm/AP-square"} <= set(lines[1])
    assert _files(theirs) == MASK_RCNN_FILES

    ours = tmp_path / "run"
    _run("lazyconfig_train_net.py", ["--config-file", _mask_rcnn_config(), *_lazy_overrides(ours)], LAZY_IMPORTS)
    _assert_same_run(ours, theirs)
    # default_setup saved the LazyConfig with d2lightning's LazyConfig.save: detectron2's file, byte for byte
    config = (ours / "config.yaml").read_text().replace(str(ours), "<OUTPUT_DIR>")
    assert config == (theirs / "config.yaml").read_text().replace(str(theirs), "<OUTPUT_DIR>")


@needs_detectron2_tool("lazyconfig_train_net.py")
def test_detectron2_mask_rcnn_lazyconfig_trains_with_the_d2lightning_command(
    detectron2_lazy_run: Path, tmp_path: Path
) -> None:
    from d2lightning.cli import main

    argv = ["train", "--config-file", _mask_rcnn_config(), *_lazy_overrides(tmp_path, new="+")]
    with restored_loggers():
        assert main(argv) == 0
    assert _files(tmp_path) == MASK_RCNN_FILES
    assert metrics_lines(tmp_path / "metrics.json") == metrics_lines(detectron2_lazy_run / "metrics.json")

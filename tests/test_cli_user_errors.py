"""One line and exit status 1 — no traceback — for each user error of the ``d2lightning`` command.

Also: YAML flow syntax for ``LIGHTNING.CALLBACKS`` / ``LOGGERS`` overrides, the warnings for an evaluation
without weights and for a fresh run over an earlier run's checkpoints, and a worker that cannot reach its master.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from d2lightning import cli
from d2lightning.checkpoint.atomic import atomic_save
from d2lightning.cli_errors import user_error_message
from d2lightning.config import apply_overrides, get_cfg
from d2lightning.engine.distributed.cluster import DistributedEnvironment
from d2lightning.engine.distributed.workers import RendezvousTimeoutError, wait_for_master
from d2lightning.engine.recipes.startup_checks import check_device
from tests.helpers.checkpoint import random_bytes
from tests.helpers.cli import demo_args, error_line, run_cli, tiny_args
from tests.helpers.demo import DEMO_VAL_SUBSET, write_tiny_config

NOT_TORCH = "is truncated or corrupt: it is not a PyTorch file (neither a zip archive nor torch's legacy format)"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny(tmp_path: Path) -> list[str]:
    """``--config-file tiny.yaml OUTPUT_DIR <tmp>/out`` (after the command and its options)."""
    return ["--config-file", str(write_tiny_config(tmp_path / "tiny.yaml")), "OUTPUT_DIR", str(tmp_path / "out")]


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return error_line((code, captured.out, captured.err), argv[0])


def _garbage(path: Path) -> Path:
    path.write_bytes(b"x" * 2000)
    random_bytes(path)
    return path


# ---- the errors the issue lists -----------------------------------------------------------------------------------


def test_garbage_model_weights(tmp_path: Path, tiny: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    garbage = _garbage(tmp_path / "garbage.pth")
    message = _error(capsys, ["train", *tiny, "MODEL.WEIGHTS", str(garbage)])
    assert message == f"MODEL.WEIGHTS='{garbage}': Checkpoint {garbage} {NOT_TORCH}"


def test_nan_loss(tiny: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    message = _error(capsys, ["train", *tiny, "SOLVER.BASE_LR", "1e30", "SOLVER.WARMUP_ITERS", "0"])
    assert message.startswith("Loss became infinite or NaN at iteration=")
    assert "loss_dict = {" in message
    assert message.endswith(
        "The training diverged: lower SOLVER.BASE_LR, lengthen SOLVER.WARMUP_ITERS or enable SOLVER.CLIP_GRADIENTS "
        "(and check the data)."
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("command", ["train", "eval"])
def test_cuda_device_without_a_gpu(tiny: list[str], capsys: pytest.CaptureFixture[str], command: str) -> None:
    message = _error(capsys, [command, *tiny, "MODEL.DEVICE", "cuda"])
    assert message.startswith("MODEL.DEVICE='cuda', but no CUDA GPU is available here (torch.cuda.is_available()")
    assert message.endswith("; set MODEL.DEVICE cpu")


@pytest.mark.parametrize(("precision", "dtype"), [("bf16-true", "bfloat16"), ("16-true", "float16")])
def test_weight_converting_precision(
    tiny: list[str], capsys: pytest.CaptureFixture[str], precision: str, dtype: str
) -> None:
    message = _error(capsys, ["train", *tiny, "LIGHTNING.PRECISION", precision])
    assert message.startswith(
        f"LIGHTNING.PRECISION='{precision}' converts the model's weights to {dtype}, but detectron2-style models "
        "normalise their input images in float32 themselves"
    )
    assert "use 'bf16-mixed' or '16-mixed'" in message


@pytest.mark.slow
def test_batch_not_divisible_by_two_launched_processes(tmp_path: Path) -> None:
    """The error is raised in both workers; the command prints it once, without their tracebacks."""
    args = demo_args(tmp_path / "out", "SOLVER.IMS_PER_BATCH", "3")
    result = run_cli([args[0], "--num-gpus", "2", "--dist-url", "auto", *args[1:]])
    assert error_line(result) == (
        "SOLVER.IMS_PER_BATCH=3 must be a positive multiple of the number of processes (2, --num-gpus x "
        "--num-machines): each process takes an equal share of the batch"
    )
    assert "Terminating process" not in result.stderr


def test_a_config_file_error_in_launched_processes_is_one_line(tmp_path: Path) -> None:
    """Config errors carry keyword-only attributes (``path``): they reach the launching process pickled, whole."""
    result = run_cli(["train", "--num-gpus", "2", "--dist-url", "auto", "--config-file", str(tmp_path / "nope.yaml")])
    assert error_line(result).startswith(f"Config file '{tmp_path / 'nope.yaml'}' does not exist and is not a built-in")


def test_eval_with_a_corrupt_checkpoint(tmp_path: Path, tiny: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    garbage = _garbage(tmp_path / "garbage.pth")
    assert _error(capsys, ["eval", *tiny, "MODEL.WEIGHTS", str(garbage)]) == f"Checkpoint {garbage} {NOT_TORCH}"
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "last_checkpoint").write_text("model_final.pth")
    _garbage(out / "model_final.pth")
    assert _error(capsys, ["eval", "--resume", *tiny]) == (
        f"No checkpoint in '{out}' can be read: model_final.pth (it is not a PyTorch file (neither a zip archive nor "
        "torch's legacy format)). Delete or replace the damaged files, or train into another OUTPUT_DIR"
    )


def test_intact_file_with_foreign_objects_gets_the_weights_only_hint(
    tmp_path: Path, tiny: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "objects.pth"
    atomic_save({"model": {}, "extra": logging.Logger}, path)
    assert _error(capsys, ["eval", *tiny, "MODEL.WEIGHTS", str(path)]) == (
        f"Checkpoint {path} holds objects that torch.load(weights_only=True) refuses (logging.Logger); if you trust "
        "the file, set checkpointer.weights_only = False"
    )


# ---- warnings and syntax ------------------------------------------------------------------------------------------


def test_callbacks_and_loggers_take_yaml_flow_syntax(tmp_path: Path, tiny: list[str]) -> None:
    cfg = get_cfg()
    apply_overrides(
        cfg,
        [
            "LIGHTNING.CALLBACKS",
            "[{class_path: lightning.pytorch.callbacks.LearningRateMonitor, init_args: {logging_interval: step}}]",
            "LIGHTNING.LOGGERS=[lightning.pytorch.loggers.CSVLogger]",
            "OUTPUT_DIR",
            "[not a list]",  # a str key keeps the text
        ],
    )
    assert cfg.LIGHTNING.CALLBACKS == [
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "step"}}
    ]
    assert cfg.LIGHTNING.LOGGERS == ["lightning.pytorch.loggers.CSVLogger"]
    assert cfg.OUTPUT_DIR == "[not a list]"
    argv = ["train", *tiny, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()"]
    argv += ["LIGHTNING.LOGGERS", "[{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {name: flow}}]"]
    assert cli.main(argv) == 0
    assert (tmp_path / "out" / "flow" / "version_0" / "metrics.csv").exists()


_UNTRAINED = (
    "d2lightning eval: warning: these are the results of an untrained model: {key} is empty and {why}; pass "
    "{key}{assign}path/to/model.pth, or --resume to evaluate the last checkpoint of the output directory"
)


def test_eval_without_weights_warns_once_after_the_results(tiny: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["eval", *tiny]) == 0
    captured = capsys.readouterr()
    warning = _UNTRAINED.format(key="MODEL.WEIGHTS", assign=" ", why="--resume was not given")
    assert captured.err.splitlines()[-1] == warning  # the last line, after the results table
    assert "untrained" not in captured.out
    assert cli.main(["eval", "--resume", *tiny]) == 0
    why = f"{tiny[-1]} has no checkpoint to resume from"
    assert capsys.readouterr().err.splitlines()[-1] == _UNTRAINED.format(key="MODEL.WEIGHTS", assign=" ", why=why)
    assert cli.main(["train", *tiny, "SOLVER.MAX_ITER", "2"]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--resume", *tiny]) == 0  # a checkpoint to evaluate: no warning
    assert "untrained" not in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["yaml", "py"])
def test_eval_without_weights_is_one_visible_line_on_both_config_kinds(tmp_path: Path, kind: str) -> None:
    if kind == "yaml":
        args = tiny_args(tmp_path, tmp_path / "out", command="eval")
        key, assign = "MODEL.WEIGHTS", " "
    else:  # the built-in LazyConfig, evaluated on 8 images of its validation split
        subset = [
            f"dataloader.test.dataset.names={DEMO_VAL_SUBSET}",
            f"dataloader.evaluator.dataset_name={DEMO_VAL_SUBSET}",
        ]
        args = ["eval", "--config-file", "shapes_detector.py", f"train.output_dir={tmp_path / 'out'}", *subset]
        key, assign = "train.init_checkpoint", "="
    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-3000:]
    warning = _UNTRAINED.format(key=key, assign=assign, why="--resume was not given")
    assert result.stderr.splitlines()[-1] == warning
    assert (result.stdout + result.stderr).count("untrained") == 1


# ---- OUTPUT_DIR that cannot be used; a warmup longer than the run ---------------------------------------------------


@pytest.mark.parametrize(
    ("command", "config", "key"),
    [("train", "yaml", "OUTPUT_DIR"), ("eval", "yaml", "OUTPUT_DIR"), ("train", "py", "train.output_dir")],
)
def test_an_output_dir_under_a_file_is_named_in_one_line(tmp_path: Path, command: str, config: str, key: str) -> None:
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "run"
    if config == "yaml":
        args = tiny_args(tmp_path, out, command=command)
    else:
        args = [command, "--config-file", "shapes_detector.py", f"train.output_dir={out}"]
    message = error_line(run_cli(args), command)
    assert (
        message
        == f"{key} '{out}' cannot be used as the output directory: '{tmp_path / 'a_file'}' is a file, not a directory"
    )


def test_an_output_dir_without_permission_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from d2lightning.engine.recipes.output_dir import make_output_dir

    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr("os.access", lambda path, mode: False)  # also as root, who may write anywhere
    with pytest.raises(PermissionError) as info:
        make_output_dir(str(locked / "run"), "train.output_dir")
    assert str(info.value) == (
        f"train.output_dir '{locked / 'run'}' cannot be used as the output directory: Permission denied "
        f"('{locked / 'run'}')"
    )
    assert user_error_message(info.value) == str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_a_read_only_output_dir_is_one_line(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    message = error_line(run_cli(tiny_args(tmp_path, locked / "run")))
    assert message.startswith(
        f"OUTPUT_DIR '{locked / 'run'}' cannot be used as the output directory: Permission denied"
    )


def test_a_warmup_longer_than_the_run_is_one_warning_naming_both_keys(tmp_path: Path) -> None:
    result = run_cli(tiny_args(tmp_path, tmp_path / "out", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "5"))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "warms up" in line]
    assert len(lines) == 1, lines
    assert lines[0].endswith(
        "SOLVER.MAX_ITER (2) <= SOLVER.WARMUP_ITERS (5): the learning rate warms up during the whole run and never "
        "reaches SOLVER.BASE_LR (0.05); lower SOLVER.WARMUP_ITERS (e.g. to 1) or raise SOLVER.MAX_ITER"
    )
    assert lines[0].startswith("WARNING [")  # the console's warning layout, on stdout with the run's log


def test_a_fresh_run_over_an_earlier_runs_checkpoints_warns_naming_them(
    tiny: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tiny[-1]
    assert cli.main(["train", *tiny, "SOLVER.MAX_ITER", "6"]) == 0
    assert "holds checkpoints of an earlier run" not in capsys.readouterr().out
    assert cli.main(["train", *tiny, "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2"]) == 0
    assert (
        f"OUTPUT_DIR '{out}' holds checkpoints of an earlier run and this run starts at iteration 0: it will "
        "overwrite last_checkpoint, model_0000005.pth, model_final.pth; model_0000002.pth will stay beside its own "
        "files; metrics.json gets its lines appended. Pass --resume (resume=True) to continue that run, or use "
        "another OUTPUT_DIR."
    ) in capsys.readouterr().out
    assert cli.main(["train", "--resume", *tiny, "SOLVER.MAX_ITER", "8"]) == 0
    assert "holds checkpoints of an earlier run" not in capsys.readouterr().out


# ---- a worker whose master is unreachable -------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens there once the socket is closed


def test_waiting_for_the_master_says_whom_and_gives_up(caplog: pytest.LogCaptureFixture) -> None:
    port = _closed_port()
    env = DistributedEnvironment(
        launcher="d2lightning",
        world_size=2,
        rank=1,
        local_rank=0,
        local_world_size=1,
        node_rank=1,
        num_nodes=2,
        master_addr="127.0.0.1",
        master_port=port,
    )
    with (
        caplog.at_level(logging.WARNING, logger="d2lightning.engine.launch"),
        pytest.raises(RendezvousTimeoutError) as gave_up,
    ):
        wait_for_master(env, timedelta(seconds=4))
    [waiting] = caplog.messages
    assert waiting.startswith(
        f"Rank 1 (machine rank 1) is waiting for the master process of this run at 127.0.0.1:{port} (rank 0, on "
        "machine rank 0): "
    )
    assert waiting.endswith("Giving up in 0:00:04 (D2L_RENDEZVOUS_TIMEOUT=<seconds>)")
    assert str(gave_up.value).startswith(
        f"Rank 1 (machine rank 1) could not reach the master process of this run at 127.0.0.1:{port} (rank 0, on "
        "machine rank 0) within 0:00:04: start machine rank 0 with the same --dist-url, check the address and that "
        "the port is open ("
    )


@pytest.mark.slow
def test_cli_worker_of_machine_1_without_its_master(tmp_path: Path) -> None:
    port = _closed_port()
    args = demo_args(tmp_path / "out")
    dist = ["--num-gpus", "1", "--num-machines", "2", "--machine-rank", "1", "--dist-url", f"tcp://127.0.0.1:{port}"]
    result = run_cli([args[0], *dist, *args[1:]], D2L_RENDEZVOUS_TIMEOUT="5")
    message = error_line(result)
    assert message.startswith(
        f"Rank 1 (machine rank 1) could not reach the master process of this run at 127.0.0.1:{port}"
    )
    assert f"is waiting for the master process of this run at 127.0.0.1:{port}" in result.stderr
    bad = run_cli([args[0], *dist, *args[1:]], D2L_RENDEZVOUS_TIMEOUT="soon")
    assert error_line(bad) == "D2L_RENDEZVOUS_TIMEOUT='soon' must be a number of seconds"


# ---- the classification itself ------------------------------------------------------------------------------------


def test_worker_errors_are_judged_by_their_cause() -> None:
    wrapped = mp.ProcessRaisedException("\n\n-- Process 1 failed first ... Traceback ...", 1, 123)
    assert user_error_message(wrapped) is None  # no cause: a traceback it is
    wrapped.__cause__ = ValueError("SOLVER.IMS_PER_BATCH=3 must be ...")
    assert user_error_message(wrapped) == "SOLVER.IMS_PER_BATCH=3 must be ..."
    wrapped.__cause__ = RuntimeError("a bug")
    assert user_error_message(wrapped) is None
    assert user_error_message(RuntimeError("a bug")) is None
    assert user_error_message(KeyError("Dataset 'x' is not registered")) == "Dataset 'x' is not registered"


@pytest.mark.parametrize(
    ("device", "cuda_count", "message"),
    [
        ("gpu", 0, "MODEL.DEVICE='gpu' is not a device torch knows ("),
        ("cuda:1", 1, "MODEL.DEVICE='cuda:1', but this machine has 1 CUDA GPU(s) (indices from 0)"),
    ],
)
def test_device_checks(monkeypatch: pytest.MonkeyPatch, device: str, cuda_count: int, message: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_count)
    cfg = get_cfg()
    cfg.MODEL.DEVICE = device
    with pytest.raises(ValueError) as error:
        check_device(cfg)
    assert str(error.value).startswith(message)
    if cuda_count:
        cfg.MODEL.DEVICE = "cuda:0"
        check_device(cfg)  # accepted where a GPU is present

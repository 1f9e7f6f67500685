"""Running the ``d2lightning`` command in a subprocess (``tests/jobs/cli_job.py``), for the crash and signal tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import DEMO_CONFIG, REPO
from tests.helpers.demo import write_tiny_config
from tests.helpers.distributed import LAUNCHER_VARS

JOB = REPO / "tests" / "jobs" / "cli_job.py"
_WAIT = 180.0  # a safety net against a stuck child, not a timing assertion


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a plain ``python`` outside any launcher or Slurm job, with the repository importable."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    return env


def tiny_args(tmp_path: Path, out: Path, *opts: str, command: str = "train") -> list[str]:
    """``train --config-file <tiny config> OUTPUT_DIR out opts...`` (the config file written once per test)."""
    config = tmp_path / "tiny.yaml"
    if not config.exists():
        write_tiny_config(config)
    return [command, "--config-file", str(config), "OUTPUT_DIR", str(out), *opts]


def demo_args(out: Path, *opts: str, command: str = "train") -> list[str]:
    """The shipped demo config, shrunk: batches of 4, no evaluation or PreciseBN, no random flip."""
    small = ["SOLVER.IMS_PER_BATCH", "4", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "INPUT.RANDOM_FLIP", "none"]
    small += ["TEST.PRECISE_BN.ENABLED", "False", "LIGHTNING.PROGRESS_BAR", "False"]
    return [command, "--config-file", str(DEMO_CONFIG), "OUTPUT_DIR", str(out), *small, *opts]


def run_cli(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """Run the command to its end; stdout and stderr captured separately."""
    return subprocess.run(
        [sys.executable, str(JOB), *args], env=cli_env(**env), capture_output=True, text=True, timeout=600
    )


def start_cli(args: list[str], new_session: bool = False, **env: str) -> subprocess.Popen[str]:
    """Start the command; with ``new_session``, in a process group of its own (``os.killpg(proc.pid, SIGINT)`` then
    reaches it and its workers, as a terminal's Ctrl-C does)."""
    return subprocess.Popen(
        [sys.executable, str(JOB), *args],
        env=cli_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def wait_for_file(path: Path, proc: subprocess.Popen[str]) -> None:
    """Wait until ``path`` exists; fail with the child's output if it ends first."""
    deadline = time.monotonic() + _WAIT
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the child ended (status {proc.returncode}) before {path.name}:\n{out[-3000:]}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the child never created {path}")
        time.sleep(0.05)


def error_line(result: subprocess.CompletedProcess[str] | tuple[int, str, str], command: str = "train") -> str:
    """The user-error contract: status 1, exactly one ``error:`` line on stderr, no traceback anywhere."""
    code, out, err = (result.returncode, result.stdout, result.stderr) if not isinstance(result, tuple) else result
    assert code == 1, f"status {code}\n{out[-3000:]}\n{err[-3000:]}"
    assert "Traceback" not in out and "Traceback" not in err, err[-3000:]
    prefix = f"d2lightning {command}: error: "
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, err[-3000:]
    return lines[0].removeprefix(prefix)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key

"""``d2lightning slurm submit``: the batch script it renders (--dry-run), and its submission with sbatch.

Submission uses a fake ``sbatch`` (``D2L_SBATCH``) that keeps the script it reads on stdin and answers like
``sbatch --parsable`` ("<job id>;<cluster>"); the real cluster is exercised in test_slurm_requeue.py.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from d2lightning.cli import main
from d2lightning.slurm import SbatchJob, render_sbatch_script
from tests.helpers import DEMO_CONFIG

DEMO = str(DEMO_CONFIG)


def _submit(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["slurm", "submit", "--config-file", DEMO, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_dry_run_renders_a_requeueable_gpu_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    options = ["--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu", "--time", "1-12:00:00", "--dry-run"]
    code, script, _ = _submit(capsys, *options, "MODEL.DEVICE", "cuda", "OUTPUT_DIR", str(out_dir))
    assert code == 0
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert [line for line in lines if line.startswith("#SBATCH")] == [
        "#SBATCH --job-name=d2l-shapes_detector",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gres=gpu:4",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=1-12:00:00",
        "#SBATCH --signal=USR1@90",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={out_dir}/slurm-%j.out",
        f"#SBATCH --error={out_dir}/slurm-%j.err",
        f"#SBATCH --chdir={Path.cwd()}",
    ]
    assert shlex.split(lines[-1]) == [
        "exec",
        "srun",
        "--kill-on-bad-exit=1",
        sys.executable,
        "-m",
        "d2lightning",
        "train",
        "--config-file",
        DEMO,
        "--num-gpus",
        "4",
        "--num-machines",
        "2",
        "--resume",
        "MODEL.DEVICE",
        "cuda",
        "OUTPUT_DIR",
        str(out_dir),
    ]
    assert not out_dir.exists()  # a dry run creates nothing


def test_cpu_config_asks_for_cpu_tasks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = ["--cpus-per-task", "3", "--job-name", "demo", "--sbatch-arg=--account=proj", "--dry-run"]
    code, script, _ = _submit(capsys, *extra, "OUTPUT_DIR", str(tmp_path))
    assert code == 0
    header = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert not any("--gres" in line for line in header)  # the demo config trains on MODEL.DEVICE cpu
    assert header[:4] == [
        "#SBATCH --job-name=demo",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --cpus-per-task=3",
    ]
    assert header[-1] == "#SBATCH --account=proj"


def test_submit_prints_the_job_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    received = tmp_path / "received.sh"
    sbatch = tmp_path / "sbatch"
    sbatch.write_text(f'#!/bin/sh\necho "$@" > "{tmp_path}/args"\ncat > "{received}"\necho "4242;localci"\n')
    sbatch.chmod(0o755)
    monkeypatch.setenv("D2L_SBATCH", str(sbatch))
    out_dir = tmp_path / "new" / "out"
    code, out, err = _submit(capsys, "--gpus-per-node", "2", "OUTPUT_DIR", str(out_dir))
    assert (code, out) == (0, "4242\n")
    assert f"{out_dir}/slurm-4242.out" in err
    assert out_dir.is_dir()  # Slurm cannot write its output into a missing directory
    assert (tmp_path / "args").read_text() == "--parsable\n"
    _, dry, _ = _submit(capsys, "--gpus-per-node", "2", "--dry-run", "OUTPUT_DIR", str(out_dir))
    assert received.read_text() == dry


def test_refused_submission_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sbatch = tmp_path / "sbatch"
    sbatch.write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: gpu' >&2\nexit 1\n")
    sbatch.chmod(0o755)
    monkeypatch.setenv("D2L_SBATCH", str(sbatch))
    code, out, err = _submit(capsys, "--partition", "gpu", "OUTPUT_DIR", str(tmp_path))
    assert (code, out) == (1, "")
    assert "sbatch refused the job (exit 1): sbatch: error: invalid partition specified: gpu" in err


def test_missing_sbatch_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("D2L_SBATCH", str(tmp_path / "nowhere" / "sbatch"))
    code, _, err = _submit(capsys, "OUTPUT_DIR", str(tmp_path))
    assert code == 1
    assert "not found: submit from a machine with Slurm's client commands" in err


def test_bad_time_limit_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _submit(capsys, "--time", "2h", "--dry-run", "OUTPUT_DIR", str(tmp_path))
    assert (code, out) == (1, "")
    assert "time='2h' is not a Slurm time limit" in err


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("nodes", 0, "nodes must be an int >= 1, got 0"),
        ("gpus_per_node", True, "gpus_per_node must be an int >= 1, got True"),
        ("cpus_per_task", -1, "cpus_per_task must be an int >= 1, got -1"),
        ("time", "90 minutes", "is not a Slurm time limit"),
        ("output_dir", "/my runs/a", "output_dir='/my runs/a' cannot go on an #SBATCH line"),
        ("partition", "", "partition='' cannot go on an #SBATCH line"),
        ("sbatch_args", ("account=proj",), "sbatch_args entry 'account=proj' is not an option"),
    ],
)
def test_sbatch_job_is_validated(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SbatchJob(**{"config_file": "c.yaml", "output_dir": "/out", field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("time", ["30", "30:00", "4:00:00", "2-0", "1-12:00", "1-12:00:00", "UNLIMITED"])
def test_slurm_time_formats_are_accepted(time: str) -> None:
    script = render_sbatch_script(SbatchJob(config_file="c.yaml", output_dir="/out", time=time))
    assert f"#SBATCH --time={time}\n" in script


def test_fsdp_with_one_process_is_refused_before_it_queues(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options = ["--nodes", "1", "--gpus-per-node", "1", "--dry-run", "LIGHTNING.STRATEGY", "fsdp"]
    code, out, err = _submit(capsys, *options, "OUTPUT_DIR", str(tmp_path / "out"))
    assert code != 0 and out == ""
    assert err.strip().splitlines() == [
        "d2lightning slurm: error: LIGHTNING.STRATEGY='fsdp' shards the model over several processes, but --nodes 1 "
        "--gpus-per-node 1 starts 1: ask for two or more, or use 'auto'"
    ]
    code, out, _ = _submit(capsys, "--gpus-per-node", "2", "--dry-run", "LIGHTNING.STRATEGY", "fsdp")
    assert code == 0 and "LIGHTNING.STRATEGY fsdp" in out

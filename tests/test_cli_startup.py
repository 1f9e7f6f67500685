"""The commands that do not train answer without importing torch or Lightning (``d2lightning --help`` at once).

Each command runs in a fresh interpreter; what it imported is read from ``sys.modules`` when it exits.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from d2lightning.model_zoo import get_config_file
from tests.helpers import REPO

HEAVY = ("torch", "lightning", "lightning_fabric", "pytorch_lightning", "torchmetrics")

# Runs `d2lightning ARGV...` as the console script does, then prints the heavy modules loaded, even on SystemExit.
PROBE = """
import atexit, json, sys
heavy = {heavy!r}
atexit.register(lambda: print("LOADED=" + json.dumps(sorted(m for m in heavy if m in sys.modules)), file=sys.stderr))
from d2lightning.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_cli(*argv: str, cwd: Path) -> tuple[int, str, list[str]]:
    """Exit code, stdout and the heavy modules loaded by ``d2lightning *argv`` in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"},
        timeout=120,
    )
    loaded = [line for line in proc.stderr.splitlines() if line.startswith("LOADED=")]
    assert len(loaded) == 1, proc.stderr[-2000:]
    return proc.returncode, proc.stdout, json.loads(loaded[0].removeprefix("LOADED="))


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["train", "--help"],
        ["eval", "--help"],
        ["predict", "--help"],
        ["plot", "--help"],
        ["slurm", "--help"],
        ["slurm", "submit", "--help"],
    ],
    ids=" ".join,
)
def test_help_imports_neither_torch_nor_lightning(argv: list[str], tmp_path: Path) -> None:
    code, out, loaded = run_cli(*argv, cwd=tmp_path)
    assert code == 0
    assert out.startswith("usage: d2lightning")
    assert loaded == []


def test_train_help_says_config_file_takes_a_builtin_name(tmp_path: Path) -> None:
    _, out, _ = run_cli("train", "--help", cwd=tmp_path)
    assert "--config-file takes a YAML file, or the name of a config built into the package" in out


def test_slurm_dry_run_of_a_builtin_config_imports_neither(tmp_path: Path) -> None:
    code, out, loaded = run_cli("slurm", "submit", "--dry-run", "--config-file", "shapes_detector", cwd=tmp_path)
    assert code == 0
    assert f"train --config-file {get_config_file('shapes_detector')} --num-gpus 1" in out
    assert "#SBATCH --job-name=d2l-shapes_detector" in out
    assert loaded == []


def test_plot_imports_neither(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="`d2lightning plot` needs the plot extra (matplotlib)")
    lines = [{"iteration": 19, "total_loss": 2.0, "lr": 0.01}, {"iteration": 39, "total_loss": 1.0, "lr": 0.02}]
    (tmp_path / "metrics.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    code, _, loaded = run_cli("plot", str(tmp_path), cwd=tmp_path)
    assert code == 0
    assert (tmp_path / "metrics.png").is_file()
    assert loaded == []


def test_import_d2lightning_alone_imports_nothing_heavy(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", f"import d2lightning, sys; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert proc.stdout.strip() == "[]", proc.stderr

"""The built-in configs: one copy in git (the top-level ``configs/``), shipped in the wheel and the sdist, and found
from a wheel, an editable install and a source checkout alike (``setup.py``, ``d2lightning/model_zoo/model_zoo.py``).

``scripts/check_wheel.sh`` (CI) goes further: it installs the wheel with its dependencies into a fresh virtualenv and
trains the demo with the installed command.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO

CONFIGS = REPO / "configs"
EXPECTED = ["Base-D2Lightning.yaml", "shapes_detector.py", "shapes_detector.yaml"]
_WHERE = "from d2lightning.model_zoo import builtin_config_names, get_config_file; import d2lightning; " + (
    "print(d2lightning.__file__); print(get_config_file('shapes_detector')); print(*builtin_config_names())"
)


def _python(code: str, cwd: Path, pythonpath: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()


def test_configs_is_at_the_top_level_with_both_config_kinds_and_nowhere_else() -> None:
    assert sorted(p.name for p in CONFIGS.iterdir() if p.suffix in (".yaml", ".py")) == EXPECTED
    assert {p.suffix for p in CONFIGS.iterdir()} >= {".yaml", ".py"}
    assert not (REPO / "d2lightning" / "model_zoo" / "configs").exists()  # the single copy is configs/


@pytest.fixture(scope="module")
def distributions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist, and the wheel built from it (``python -m build``, as a release), from the files git knows."""
    pytest.importorskip("build", reason="building needs the dev extra (build)")
    pytest.importorskip("setuptools", reason="building without isolation needs setuptools (the dev extra)")
    work = tmp_path_factory.mktemp("dist")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():  # a file deleted but not yet committed is listed too
            (work / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, work / "src" / name)
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(work / "out"), str(work / "src")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"wheel": next((work / "out").glob("*.whl")), "sdist": next((work / "out").glob("*.tar.gz"))}


def test_the_wheel_and_the_sdist_carry_the_configs(distributions: dict[str, Path]) -> None:
    wheel = zipfile.ZipFile(distributions["wheel"]).namelist()
    prefix = "d2lightning/model_zoo/configs/"
    assert sorted(n.removeprefix(prefix) for n in wheel if n.startswith(prefix)) == EXPECTED
    assert "d2lightning/py.typed" in wheel
    assert not [n for n in wheel if n.startswith("configs/")]  # inside the package only
    with tarfile.open(distributions["sdist"]) as sdist:
        names = sdist.getnames()
    root = names[0].split("/")[0]
    assert sorted(n.removeprefix(f"{root}/configs/") for n in names if n.startswith(f"{root}/configs/")) == EXPECTED


def test_an_unpacked_wheel_outside_the_checkout_finds_its_own_configs(
    distributions: dict[str, Path], tmp_path: Path
) -> None:
    site = tmp_path / "site-packages"
    zipfile.ZipFile(distributions["wheel"]).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    module, demo, names = _python(_WHERE, cwd=elsewhere, pythonpath=str(site))
    assert Path(module).parent == site / "d2lightning"
    assert Path(demo) == site / "d2lightning" / "model_zoo" / "configs" / "shapes_detector.yaml"
    assert names.split() == EXPECTED


def test_a_source_checkout_on_the_path_finds_the_top_level_configs(tmp_path: Path) -> None:
    """As pytest's ``pythonpath = ["."]`` and ``python -m d2lightning`` from the checkout import it."""
    module, demo, names = _python(_WHERE, cwd=tmp_path, pythonpath=str(REPO))
    assert Path(module).parent == REPO / "d2lightning"
    assert Path(demo) == CONFIGS / "shapes_detector.yaml"
    assert names.split() == EXPECTED


def test_an_editable_install_finds_the_top_level_configs(tmp_path: Path) -> None:
    module, demo, names = _python(_WHERE, cwd=tmp_path, pythonpath=None)
    if Path(module).parent != REPO / "d2lightning":
        pytest.skip(f"d2lightning is not installed editable from this checkout here (it is {module})")
    assert Path(demo) == CONFIGS / "shapes_detector.yaml"
    assert names.split() == EXPECTED

"""detectron2's own config tests, run against ``d2lightning.config``.

detectron2's ``tests/config`` folder (its three test files and the config files they load) is copied from the
checkout ``DETECTRON2_SOURCE`` names into a temporary folder at run time, every ``detectron2.config`` in it pointed at
``d2lightning.config`` (nothing else changes: ``detectron2.layers``, ``detectron2.modeling``, ``detectron2.model_zoo``
and ``detectron2.utils.testing`` stay detectron2's), and pytest runs it in a subprocess. The copy's ``conftest.py``
checks that ``d2lightning`` comes from this checkout and calls ``add_detectron2_defaults()``: detectron2's
``get_cfg()`` has its architecture keys, d2lightning's gets them so (its documented way to read detectron2's
configs); ``test_yacs_config.py``'s ``test_auto_upgrade`` merges a version-0 file that sets ``MODEL.RPN_HEAD.NAME``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.helpers.detectron2_runs import DETECTRON2_MARKS

SOURCE = os.environ.get("DETECTRON2_SOURCE", "")
TESTS = Path(SOURCE) / "tests" / "config"
EXPECTED = {"test_lazy_config.py": 9, "test_instantiate_config.py": 8, "test_yacs_config.py": 11}

pytestmark = [
    *DETECTRON2_MARKS,
    pytest.mark.skipif(
        not SOURCE or not all((TESTS / name).is_file() for name in EXPECTED),
        reason="detectron2's tests/config not found: set DETECTRON2_SOURCE (a detectron2 source checkout)",
    ),
]

_CONFTEST = f"""import d2lightning
from d2lightning.config import add_detectron2_defaults

assert d2lightning.__file__.startswith({str(REPO / "d2lightning")!r}), d2lightning.__file__
add_detectron2_defaults()
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict[str, int]], str]:
    """Per test file of the copy, how many tests ended in each outcome (``PASSED``, ``FAILED``...); pytest's output."""
    copy = tmp_path_factory.mktemp("detectron2_tests") / "config"
    shutil.copytree(TESTS, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for path in copy.rglob("*.py"):
        path.write_text(re.sub(r"\bdetectron2\.config\b", "d2lightning.config", path.read_text()))
    (copy / "conftest.py").write_text(_CONFTEST)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", *EXPECTED],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    counts: dict[str, dict[str, int]] = {name: {} for name in EXPECTED}
    for outcome, name in re.findall(
        r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (?:\[\d+\] )?([\w.]+)", proc.stdout, re.M
    ):
        if name in counts:
            counts[name][outcome] = counts[name].get(outcome, 0) + 1
    output = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert any(counts.values()), output
    return counts, output


@pytest.mark.parametrize("name", list(EXPECTED))
def test_detectron2s_config_tests_pass_on_d2lightning(
    outcomes: tuple[dict[str, dict[str, int]], str], name: str
) -> None:
    counts, output = outcomes
    assert counts[name] == {"PASSED": EXPECTED[name]}, output

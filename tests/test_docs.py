"""The documentation site builds with warnings as errors, and its API reference documents every public name.

The site is built once per session into a temporary folder (``mkdocs build --strict``), then its object
inventory (``objects.inv``, what other sites link against) is read: every name in the ``__all__`` of the
packages below, as they are when the test runs, must be in it.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

pytest.importorskip("mkdocs", reason="building the docs needs the docs extra: pip install -e '.[docs]'")
Inventory = pytest.importorskip("mkdocstrings", reason="the docs extra (mkdocstrings) is not installed").Inventory

DOCUMENTED = [
    "d2lightning.engine",
    "d2lightning.engine.hooks",
    "d2lightning.config",
    "d2lightning.checkpoint",
    "d2lightning.solver",
    "d2lightning.utils.events",
    "d2lightning.model_zoo",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(REPO / "mkdocs.yml"),
            "-d",
            str(out),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_every_public_name_is_in_the_api_reference(site: Path) -> None:
    with open(site / "objects.inv", "rb") as f:
        inventory = Inventory.parse_sphinx(f)
    missing = [
        f"{module}.{name}"
        for module in DOCUMENTED
        for name in importlib.import_module(module).__all__
        if f"{module}.{name}" not in inventory
    ]
    assert missing == []
    assert (
        inventory["d2lightning.engine.SimpleTrainer"].uri
        == "reference/d2lightning/engine/#d2lightning.engine.SimpleTrainer"
    )


TOPICS = {
    "getting-started": "Getting started",
    "detectron2": "Switching from detectron2",
    "lightning": "For Lightning users",
    "configs": "Configs",
    "distributed": "Distributed training and SLURM",
    "checkpoints": "Checkpoints, crashes and signals",
    "cli": "The command line",
    "performance": "Performance",
}


def test_the_topic_pages_are_built_and_link_into_the_reference(site: Path) -> None:
    for page, title in TOPICS.items():
        html = (site / page / "index.html").read_text(encoding="utf-8")
        assert f">{title}<" in html, page
    detectron2 = (site / "detectron2" / "index.html").read_text(encoding="utf-8")
    # a cross-reference written as [`d2lightning.utils.events`][d2lightning.utils.events] became a link
    assert 'href="../reference/d2lightning/utils/events/#d2lightning.utils.events"' in detectron2

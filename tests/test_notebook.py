"""``notebooks/quickstart.ipynb`` runs top to bottom (its last cell asserts that AP50 improved)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import REPO

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs the dev extra (nbformat, nbclient)")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs the dev extra (nbformat, nbclient)")

NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def test_outputs_are_stripped_in_the_repository() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    assert [(c.outputs, c.execution_count) for c in code] == [([], None)] * len(code)


@pytest.mark.slow
def test_quickstart_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "quickstart"
    monkeypatch.setenv("D2L_QUICKSTART_OUTPUT", str(out))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails
    last_output = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert last_output.startswith("AP50: ")
    assert {"model_0000079.pth", "model_0000159.pth", "model_0000239.pth", "model_final.pth", "metrics.png"} <= {
        p.name for p in out.iterdir()
    }

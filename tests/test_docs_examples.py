"""Every Python block of README.md and docs/*.md runs as written, unless it is marked as a fragment.

A block runs in a fresh interpreter, in an empty temporary folder (what it writes, e.g. ``./output``, goes there),
with this checkout importable. A fragment — code that cannot run alone, shown to be read — is marked by an HTML
comment on the line right before its opening fence, which Markdown and the documentation site do not show:

    <!-- fragment: why it cannot run alone -->
    ```python
    ...
    ```

The reason is required. README.md's "Development" section says so for contributors.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO

FRAGMENT = re.compile(r" *<!-- fragment: (\S.*?) -->\s*")  # a line of its own
_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\w*)[^\n]*$")


@dataclass(frozen=True)
class Block:
    """A fenced Python block: where it is, its code, and the reason it is a fragment (None: it runs)."""

    path: Path
    line: int  # of the opening fence, 1-based
    code: str
    fragment: str | None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of the Markdown file ``path``, with their fragment markers.

    Raises:
        ValueError: a fence is not closed, or a fragment marker is not right before a Python block.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            if FRAGMENT.fullmatch(lines[i]) and not (
                i + 1 < len(lines) and lines[i + 1].lstrip().startswith("```python")
            ):
                raise ValueError(f"{path.name}:{i + 1}: a fragment marker must be right before a ```python block")
            i += 1
            continue
        start, indent = i, len(fence["indent"])
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        if i == len(lines):
            raise ValueError(f"{path.name}:{start + 1}: the fence is not closed")
        if fence["lang"] == "python":
            marker = FRAGMENT.fullmatch(lines[start - 1]) if start else None
            code = "\n".join(line[indent:] for line in lines[start + 1 : i]) + "\n"
            blocks.append(Block(path, start + 1, code, marker.group(1) if marker else None))
        i += 1
    return blocks


DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]
BLOCKS = [block for path in DOCUMENTS for block in python_blocks(path)]


def test_the_documents_have_python_blocks_and_fragments_say_why() -> None:
    # docs pages that show README's examples include them (pymdownx.snippets): each block is run once, from README
    assert len(BLOCKS) >= 7 and {b.path.name for b in BLOCKS} >= {"README.md", "configs.md", "distributed.md"}
    assert all(block.fragment is None or block.fragment.strip() for block in BLOCKS)


def test_the_block_reader_sees_fences_markers_and_their_mistakes(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "text\n```python\nprint(1)\n```\n```bash\nls\n```\n<!-- fragment: needs your model -->\n```python\nmodel\n```\n"
        "- item\n\n  ```python\n  print(2)\n  ```\nwrite `<!-- fragment: why -->` before it\n"
    )
    assert [(b.line, b.code, b.fragment) for b in python_blocks(doc)] == [
        (2, "print(1)\n", None),
        (9, "model\n", "needs your model"),
        (14, "print(2)\n", None),
    ]
    doc.write_text("<!-- fragment: why -->\n\n```python\nx\n```\n")
    with pytest.raises(ValueError, match="must be right before a ```python block"):
        python_blocks(doc)
    doc.write_text("```python\nx\n")
    with pytest.raises(ValueError, match="the fence is not closed"):
        python_blocks(doc)


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.fragment is None], ids=lambda b: b.name)
def test_the_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "D2L_"))}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run(
        [sys.executable, "-c", block.code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"{block.name}:\n{block.code}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"

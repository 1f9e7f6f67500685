"""The ``d2lightning`` command for subprocess tests: ``python tests/jobs/cli_job.py train --config-file ... [opts]``.

Registers the tiny datasets of :mod:`tests.helpers.demo` first (so the tiny config trains in a second or two),
then runs ``d2lightning.cli.main`` and exits with its status. Also holds hooks that tests put into a run through
``LIGHTNING.CALLBACKS`` (``tests.jobs.cli_job.RaiseSignalAt`` ...), and one knob:

``D2L_TEST_STALL_SAVE=<file name>``: the atomic write of that checkpoint stops just before its rename (the file is
complete under its temporary name), creates ``<OUTPUT_DIR>/stalled`` holding this process' pid, and waits until
``<OUTPUT_DIR>/go`` exists — a test kills the process meanwhile, or starts another run, then lets it go.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from d2lightning.engine import HookBase

_WAIT = 120.0  # seconds a stalled or paused process waits for the test; a safety net, not a timing assertion


class RaiseSignalAt(HookBase):
    """Send ``signum`` (a number, or a name such as ``"SIGTERM"``) to this process after iteration ``at``
    (main process)."""

    def __init__(self, at: int, signum: int | str = "SIGTERM") -> None:
        self.at = at
        self.signum = getattr(signal, signum) if isinstance(signum, str) else signum

    def after_step(self) -> None:
        from d2lightning.utils import comm

        if self.trainer.iter == self.at and comm.is_main_process():
            signal.raise_signal(self.signum)


class PauseAt(HookBase):
    """After iteration ``at`` (main process): create ``<dir>/paused``, then wait until ``<dir>/go`` exists."""

    def __init__(self, at: int, directory: str) -> None:
        self.at, self.directory = at, Path(directory)

    def after_step(self) -> None:
        from d2lightning.utils import comm

        if self.trainer.iter == self.at and comm.is_main_process():
            _wait_for_go(self.directory, "paused")


def _wait_for_go(directory: Path, marker: str) -> None:
    (directory / marker).write_text(str(os.getpid()))
    deadline = time.monotonic() + _WAIT
    while not (directory / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def _stall_before_rename(name: str) -> None:
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if os.path.basename(os.fspath(dst)) == name:
            _wait_for_go(Path(os.path.dirname(os.fspath(dst))), "stalled")
        real_replace(src, dst)

    os.replace = replace  # type: ignore[assignment]


def main() -> int:
    from d2lightning import cli
    from tests.helpers.demo import register_tiny_datasets

    register_tiny_datasets()
    stall = os.environ.get("D2L_TEST_STALL_SAVE")
    if stall:
        _stall_before_rename(stall)
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())

"""Find, start or stop the local single-node Slurm cluster of ``scripts/slurm/`` for tests marked ``slurm``.

CI brings the cluster up before the tests (``bash scripts/slurm/up.sh`` as root, or
``python tests/helpers/slurm_cluster.py up``) and down afterwards; the tests only check that it answers and skip with
the reason otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO

UP_SCRIPT = REPO / "scripts" / "slurm" / "up.sh"
DOWN_SCRIPT = REPO / "scripts" / "slurm" / "down.sh"
_USABLE_STATES = {"idle", "mixed", "allocated", "completing"}


def unavailable_reason(timeout: float = 10.0) -> str | None:
    """Why no Slurm job can run here, or None when the controller is up and has a usable node."""
    hint = "start the local cluster with `bash scripts/slurm/up.sh` (root)"
    if shutil.which("sinfo") is None or shutil.which("scontrol") is None:
        return f"Slurm is not installed (no `sinfo`/`scontrol` on PATH); {hint}"
    try:
        # `scontrol ping` answers at once; `sinfo` retries for ~10 s when the controller is down.
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=timeout)
        if "is UP" not in ping.stdout:
            first_line = (ping.stdout.strip().splitlines() or [ping.stderr.strip()])[0]
            return f"the Slurm controller is down ({first_line}); {hint}"
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"`scontrol ping`/`sinfo` did not answer within {timeout} s; {hint}"
    states = set(proc.stdout.split())
    if proc.returncode != 0 or not states & _USABLE_STATES:
        return f"no usable Slurm node (sinfo: {proc.stdout.strip() or proc.stderr.strip()}); {hint}"
    return None


def slurm_available(timeout: float = 10.0) -> bool:
    """True when the cluster answers and has a node that can run jobs."""
    return unavailable_reason(timeout) is None


def require_slurm() -> None:
    """Skip the calling test, with the reason, when no Slurm cluster is reachable."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def start_local_cluster(timeout: float = 600.0) -> float:
    """Install (if needed) and start the local cluster with ``scripts/slurm/up.sh``; needs root.

    Returns:
        The seconds it took.

    Raises:
        RuntimeError: with the script's output, when it fails.
    """
    start = time.monotonic()
    proc = subprocess.run(["bash", str(UP_SCRIPT)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{UP_SCRIPT} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return time.monotonic() - start


def stop_local_cluster(timeout: float = 120.0) -> None:
    """Cancel all jobs and stop the daemons with ``scripts/slurm/down.sh``."""
    subprocess.run(["bash", str(DOWN_SCRIPT)], check=True, timeout=timeout)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "status"
    if command == "up":
        print(f"local Slurm cluster up in {start_local_cluster():.1f} s")
    elif command == "down":
        stop_local_cluster()
    else:
        print(unavailable_reason() or "local Slurm cluster available")

"""Shared test helpers, one module per concern; fixtures live in ``tests/conftest.py``.

- :mod:`tests.helpers.training`: detectron2's one-Linear test model, loaders, the recording hooks, ``run``.
- :mod:`tests.helpers.checkpoint`: position-seeded loaders and a fit in either run mode, for checkpoint tests.
- :mod:`tests.helpers.demo`: the shipped demo config shrunk to run in a second (``tiny_cfg``), a known-answer model.
- :mod:`tests.helpers.tiny_trainer`: a ``DefaultTrainer`` that trains in milliseconds (``tiny_trainer_cfg``).
- :mod:`tests.helpers.detectron2_runs`: runs under a real detectron2 (skipped without it).
- :mod:`tests.helpers.distributed`: passing results from worker processes back to the test.
- :mod:`tests.helpers.logs`: putting process-wide logger configuration back; the records of a ``log.txt``.
- :mod:`tests.helpers.slurm_cluster`: the local Slurm cluster of ``scripts/slurm/``.
- :mod:`tests.helpers.cli`: the ``d2lightning`` command in a subprocess (``tests/jobs/cli_job.py``).

This module itself imports nothing heavy (no torch): job scripts in ``tests/jobs/`` import it.
"""

from __future__ import annotations

from pathlib import Path

from d2lightning.model_zoo import get_config_file

REPO = Path(__file__).resolve().parents[2]
"""The repository root (the source checkout the tests run from)."""
DEMO_CONFIG = Path(get_config_file("shapes_detector"))
"""The built-in demo config (``configs/shapes_detector.yaml`` of the checkout)."""

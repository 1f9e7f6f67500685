"""Fixtures of the tests against a real detectron2 (parity, compatibility, crossover)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.logs import restored_loggers


@pytest.fixture(scope="module", autouse=True)
def _quiet_single_thread(one_thread: None) -> Iterator[None]:
    """Each module trains on one intra-op thread, and the loggers both libraries' ``default_setup`` configure
    are put back after the module (its module-scoped runs happen outside any single test)."""
    with restored_loggers():
        yield

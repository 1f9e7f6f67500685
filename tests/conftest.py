"""Test-suite wide fixtures (helpers shared as plain functions and classes live in ``tests/helpers/``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch

from tests.helpers.logs import LogRecords, restored_loggers


@pytest.fixture(autouse=True)
def _restore_loggers() -> Iterator[None]:
    """``default_setup``, ``DefaultTrainer`` and the CLI configure loggers process-wide (DEBUG, no propagation,
    handlers); put every such logger back as it was after each test, so tests do not depend on their order."""
    with restored_loggers():
        yield


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a whole test module (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    Tiny models run fastest on one thread; on a busy shared CPU, two threads spin against each other.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def d2_log() -> Iterator[LogRecords]:
    """The messages logged to ``d2lightning.*`` during the test."""
    handler = LogRecords()
    lg = logging.getLogger("d2lightning")
    lg.addHandler(handler)
    if not lg.isEnabledFor(logging.INFO):
        lg.setLevel(logging.DEBUG)
    yield handler
    lg.removeHandler(handler)

"""Test-suite wide fixtures."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from d2lightning.utils.logger import setup_logger

_CONFIGURED_LOGGERS = ("d2lightning", "lightning.pytorch", "detectron2", "fvcore")


@pytest.fixture(autouse=True)
def _restore_loggers() -> Iterator[None]:
    """``default_setup``, ``DefaultTrainer`` and the CLI configure loggers process-wide (DEBUG, no propagation,
    handlers); put every such logger back as it was after each test, so tests do not depend on their order."""
    saved = {}
    for name in _CONFIGURED_LOGGERS:
        lg = logging.getLogger(name)
        saved[name] = (lg.propagate, list(lg.handlers), lg.level)
    yield
    setup_logger.cache_clear()
    for name, (propagate, handlers, level) in saved.items():
        lg = logging.getLogger(name)
        for h in lg.handlers:
            if h not in handlers:
                h.close()
        lg.handlers = handlers
        lg.propagate = propagate
        lg.setLevel(level)

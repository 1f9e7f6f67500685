"""Process-wide logger state in tests: putting it back, and reading what ``d2lightning.*`` logged."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

CONFIGURED_LOGGERS = ("d2lightning", "lightning.pytorch", "detectron2", "fvcore")
"""The loggers ``default_setup``/``setup_logger`` (both libraries'), ``DefaultTrainer`` and the CLI configure."""


@contextlib.contextmanager
def restored_loggers() -> Iterator[None]:
    """Undo what was done meanwhile to :data:`CONFIGURED_LOGGERS` (level, propagation, handlers) and forget
    which loggers ``setup_logger`` already set up, so that tests do not depend on their order."""
    saved = {}
    for name in CONFIGURED_LOGGERS:
        lg = logging.getLogger(name)
        saved[name] = (lg.propagate, list(lg.handlers), lg.level)
    try:
        yield
    finally:
        from d2lightning.utils.logger import setup_logger

        setup_logger.cache_clear()
        d2_logger = sys.modules.get("detectron2.utils.logger")
        if d2_logger is not None:
            d2_logger.setup_logger.cache_clear()
        for name, (propagate, handlers, level) in saved.items():
            lg = logging.getLogger(name)
            for handler in lg.handlers:
                if handler not in handlers:
                    handler.close()
            lg.handlers, lg.propagate = handlers, propagate
            lg.setLevel(level)


class LogRecords(logging.Handler):
    """Collects the messages of the ``d2lightning`` logger (which does not propagate to pytest's caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

"""detectron2's ``utils.logger.setup_logger``: console on the main process, ``log.txt`` files per rank."""

from __future__ import annotations

import functools
import logging
import os
import sys

__all__ = ["setup_logger"]

_FORMAT = "[%(asctime)s %(name)s]: %(message)s"
_DATEFMT = "%m/%d %H:%M:%S"


@functools.lru_cache  # the same logger is set up once, however often it is asked for
def setup_logger(
    output: str | None = None, distributed_rank: int = 0, *, name: str = "d2lightning", abbrev_name: str | None = None
) -> logging.Logger:
    """Configure logger ``name`` (DEBUG, no propagation) as detectron2 does.

    Rank 0 logs INFO and above to stdout. With ``output`` (a directory, or a file path ending in .txt/.log),
    every rank also logs DEBUG to a file: ``output/log.txt`` on rank 0, ``output/log.txt.rank{r}`` elsewhere.

    Args:
        output: where the log file goes, or None for no file.
        distributed_rank: the global rank of this process.
        name: the logger to configure.
        abbrev_name: a shorter name shown on the console (default: ``name``).

    Returns:
        The configured logger.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    shown = abbrev_name or name
    if distributed_rank == 0:
        console = logging.StreamHandler(stream=sys.stdout)
        console.setLevel(logging.INFO)
        console.setFormatter(logging.Formatter(_FORMAT.replace("%(name)s", shown), datefmt=_DATEFMT))
        logger.addHandler(console)
    if output is not None:
        filename = output if output.endswith((".txt", ".log")) else os.path.join(output, "log.txt")
        if distributed_rank > 0:
            filename = f"{filename}.rank{distributed_rank}"
        os.makedirs(os.path.dirname(filename) or ".", exist_ok=True)
        handler = logging.FileHandler(filename, mode="a")
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt=_DATEFMT))
        logger.addHandler(handler)
    return logger

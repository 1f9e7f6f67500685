"""detectron2's ``utils.logger``: ``setup_logger``, ``log_first_n``, ``log_every_n``, ``log_every_n_seconds``,
``create_small_table``.

Same signatures and behaviour as detectron2's: ``setup_logger`` gives a logger a console handler on rank 0 and a
``log.txt`` (``log.txt.rank{r}`` on other ranks) file handler; every logger set up for the same file writes through
one shared stream, so the lines of several loggers (``"d2lightning"``, ``"detectron2"``, ``"fvcore"``) keep their
order in one ``log.txt``. File lines have detectron2's layout (``[time] name LEVEL: message``). Differences: the
default ``name`` is ``"d2lightning"``; the console logs INFO and above, and is coloured (``color=True``) only when it
is a terminal, so captured output holds no escape codes.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import IO, Any

__all__ = ["create_small_table", "log_every_n", "log_every_n_seconds", "log_first_n", "setup_logger"]

#: detectron2's names for the write buffer of remote log files; log files here are local and flushed per line.
D2_LOG_BUFFER_SIZE_KEY: str = "D2_LOG_BUFFER_SIZE"
DEFAULT_LOG_BUFFER_SIZE: int = 1024 * 1024

_DATEFMT = "%m/%d %H:%M:%S"
_FILE_FORMAT = "[%(asctime)s] %(name)s %(levelname)s: %(message)s"
_GREEN, _RED, _BLINK, _UNDERLINE, _RESET = "\033[32m", "\033[31m", "\033[5m", "\033[4m", "\033[0m"


class _ConsoleFormatter(logging.Formatter):
    """``[time abbrev]: message``: the logger's root name shown as its abbreviation; WARNING/ERROR prefixed."""

    def __init__(self, root_name: str, abbrev_name: str, color: bool) -> None:
        head = "[%(asctime)s %(name)s]: "
        super().__init__((f"{_GREEN}{head}{_RESET}" if color else head) + "%(message)s", datefmt=_DATEFMT)
        self._root, self._abbrev, self._color = root_name, abbrev_name, color

    def formatMessage(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)  # other handlers keep the real name
        if record.name == self._root or record.name.startswith(self._root + "."):
            rest = record.name[len(self._root) :]
            record.name = (self._abbrev + rest) if self._abbrev else rest.lstrip(".")
        text = super().formatMessage(record)
        if record.levelno == logging.WARNING:
            prefix = f"{_RED}{_BLINK}WARNING{_RESET}" if self._color else "WARNING"
        elif record.levelno >= logging.ERROR:
            prefix = f"{_RED}{_BLINK}{_UNDERLINE}ERROR{_RESET}" if self._color else "ERROR"
        else:
            return text
        return f"{prefix} {text}"


@functools.lru_cache  # the same logger is set up once, however often it is asked for
def setup_logger(
    output: str | None = None,
    distributed_rank: int = 0,
    *,
    color: bool = True,
    name: str = "d2lightning",
    abbrev_name: str | None = None,
    enable_propagation: bool = False,
    configure_stdout: bool = True,
) -> logging.Logger:
    """Configure logger ``name`` (level DEBUG) as detectron2's ``setup_logger`` does.

    Rank 0 logs INFO and above to stdout (unless ``configure_stdout`` is False). With ``output`` (a directory, or a
    file path ending in .txt/.log), every rank also logs DEBUG to a file: ``output/log.txt`` on rank 0,
    ``output/log.txt.rank{r}`` elsewhere. Calling it again with the same arguments returns the same logger
    without adding handlers.

    Args:
        output: where the log file goes, or None for no file.
        distributed_rank: the global rank of this process.
        color: colour the console prefix (only when stdout is a terminal).
        name: the logger to configure.
        abbrev_name: the console name of ``name`` (default: "d2" for "detectron2", else ``name``; "" hides it).
        enable_propagation: whether records also go to the parent loggers.
        configure_stdout: whether to add the console handler.

    Returns:
        The configured logger.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = enable_propagation
    if abbrev_name is None:
        abbrev_name = "d2" if name == "detectron2" else name
    if configure_stdout and distributed_rank == 0:
        console = logging.StreamHandler(stream=sys.stdout)
        console.setLevel(logging.INFO)
        console.setFormatter(_ConsoleFormatter(name, abbrev_name, color and sys.stdout.isatty()))
        logger.addHandler(console)
    if output is not None:
        filename = output if output.endswith((".txt", ".log")) else os.path.join(output, "log.txt")
        if distributed_rank > 0:
            filename = f"{filename}.rank{distributed_rank}"
        os.makedirs(os.path.dirname(filename) or ".", exist_ok=True)
        handler = LogFileHandler(_log_stream(os.path.abspath(filename)))
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter(_FILE_FORMAT, datefmt=_DATEFMT))
        logger.addHandler(handler)
    return logger


class LogFileHandler(logging.StreamHandler):
    """The handler of a ``log.txt`` file: a stream handler on the file's shared stream (told apart from console
    handlers by its class)."""


def console_until_configured(name: str = "d2lightning") -> Callable[[], None]:
    """Give logger ``name`` a console on stderr at INFO while nothing else handles its records; return the undo.

    No detectron2 counterpart. For a run in a process whose logging nobody configured (a Lightning user's script):
    Python would print that logger's WARNING and above bare (``logging.lastResort``) and drop the INFO lines
    detectron2's hooks and writers log (``IterationTimer``'s summary, ``CommonMetricPrinter``'s lines). Only when
    no handler exists on the way from ``name`` to the root logger and ``name`` has no level of its own, it gets
    level INFO and a console handler in ``setup_logger``'s layout; that handler stays silent for any record
    another handler receives (logging configured meanwhile: no line twice). The returned function removes both.

    Args:
        name: the logger.

    Returns:
        The undo (a no-op when logging was configured).
    """
    lg = logging.getLogger(name)
    if lg.hasHandlers() or lg.level != logging.NOTSET:
        return _nothing
    handler = _ConsoleUntilConfigured(name)
    lg.addHandler(handler)
    lg.setLevel(logging.INFO)

    def undo() -> None:
        lg.removeHandler(handler)
        if lg.level == logging.INFO:  # not changed by anyone meanwhile
            lg.setLevel(logging.NOTSET)

    return undo


def _nothing() -> None:
    return None


class _ConsoleUntilConfigured(logging.Handler):
    """INFO and above to (the current) ``sys.stderr``, for records no other handler receives."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(_ConsoleFormatter(name, name, color=sys.stderr.isatty()))

    def handle(self, record: logging.LogRecord) -> bool:
        if _handled_elsewhere(record.name, self):
            return False
        return bool(super().handle(record))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def _handled_elsewhere(logger_name: str, own: logging.Handler) -> bool:
    """Whether a handler other than ``own`` is on the way of ``logger_name``'s records to the root."""
    lg: logging.Logger | None = logging.getLogger(logger_name)
    while lg is not None:
        if any(h is not own for h in lg.handlers):
            return True
        if not lg.propagate:
            return False
        lg = lg.parent
    return False


_STREAMS: dict[str, IO[str]] = {}


def _log_stream(filename: str) -> IO[str]:
    """One append stream per log file, shared by every logger that writes to it (closed at exit). A file deleted
    or replaced since it was opened is opened again."""
    stream = _STREAMS.get(filename)
    if stream is not None and not stream.closed:
        try:
            if os.stat(filename).st_ino == os.fstat(stream.fileno()).st_ino:
                return stream
        except OSError:
            pass
    stream = open(filename, "a")  # noqa: SIM115 (kept open for the process' lifetime)
    atexit.register(stream.close)
    _STREAMS[filename] = stream
    return stream


# ---------------------------------------------------------------- rate-limited logging (absl-style)
_COUNTS: Counter[Any] = Counter()
_LAST_LOGGED: dict[Any, float] = {}


def _caller() -> tuple[str, tuple[str, int, str]]:
    """The calling module's name (``__main__`` counts as "detectron2", as in detectron2) and a key of the
    call site (file, line, function), skipping this module's own frames."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:  # pragma: no cover - there is always a caller
        return "d2lightning", ("", 0, "")
    module = frame.f_globals.get("__name__", "d2lightning")
    code = frame.f_code
    return ("detectron2" if module == "__main__" else module), (code.co_filename, frame.f_lineno, code.co_name)


def log_first_n(
    lvl: int, msg: str, n: int = 1, *, name: str | None = None, key: str | tuple[str, ...] = "caller"
) -> None:
    """Log ``msg`` only the first ``n`` times.

    Args:
        lvl: the logging level.
        msg: the message.
        n: how many times to log it.
        name: the logger; by default the calling module's.
        key: what identifies a repeat: "caller" (the call site), "message" (the text), or both as a tuple.

    Raises:
        ValueError: ``key`` is empty or names something other than "caller" / "message".
    """
    keys = (key,) if isinstance(key, str) else tuple(key)
    if not keys or any(k not in ("caller", "message") for k in keys):
        raise ValueError(f"key must be 'caller', 'message' or a tuple of them, got {key!r}")
    module, site = _caller()
    hash_key: tuple[Any, ...] = (site if "caller" in keys else ()) + ((msg,) if "message" in keys else ())
    _COUNTS[hash_key] += 1
    if _COUNTS[hash_key] <= n:
        logging.getLogger(name or module).log(lvl, msg)


def log_every_n(lvl: int, msg: str, n: int = 1, *, name: str | None = None) -> None:
    """Log ``msg`` on the 1st, (n+1)th, (2n+1)th... call from the same call site.

    Args:
        lvl: the logging level.
        msg: the message.
        n: the period, in calls.
        name: the logger; by default the calling module's.
    """
    module, site = _caller()
    _COUNTS[site] += 1
    if n == 1 or _COUNTS[site] % n == 1:
        logging.getLogger(name or module).log(lvl, msg)


def log_every_n_seconds(lvl: int, msg: str, n: float = 1, *, name: str | None = None) -> None:
    """Log ``msg`` at most once every ``n`` seconds from the same call site.

    Args:
        lvl: the logging level.
        msg: the message.
        n: the minimum number of seconds between two logged calls.
        name: the logger; by default the calling module's.
    """
    module, site = _caller()
    now = time.time()
    last = _LAST_LOGGED.get(site)
    if last is None or now - last >= n:
        logging.getLogger(name or module).log(lvl, msg)
        _LAST_LOGGED[site] = now


def create_small_table(small_dict: Mapping[str, Any]) -> str:
    """A one-row markdown ("pipe") table of a small dict, keys as headers, floats with 3 decimals, centred
    (the table detectron2 prints with ``tabulate``; d2lightning writes it without that dependency).

    Args:
        small_dict: a result dictionary of a few items.

    Returns:
        The table as a string.
    """
    cells = [(str(k), f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in small_dict.items()]
    widths = [max(len(h) + 2, len(v)) for h, v in cells]  # headers get 2 spaces of room, as tabulate's

    def line(texts: list[str]) -> str:
        return "|" + "|".join(f" {t:^{w}} " for t, w in zip(texts, widths, strict=True)) + "|"

    rule = "|" + "|".join(f":{'-' * w}:" for w in widths) + "|"
    return "\n".join([line([h for h, _ in cells]), rule, line([v for _, v in cells])])

"""detectron2's ``utils.logger`` and ``utils.env`` names in d2lightning, and ``default_setup``'s loggers."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from d2lightning.engine import default_argument_parser, default_setup
from d2lightning.utils import env, logger
from d2lightning.utils.logger import create_small_table, log_every_n, log_every_n_seconds, log_first_n, setup_logger
from tests.helpers import REPO
from tests.helpers.logs import log_records, restored_loggers


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append((record.name, record.getMessage()))


@pytest.fixture
def collected() -> list[tuple[str, str]]:
    handler = Collect()
    names = ["d2l_test_logger", __name__]
    for name in names:
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield handler.messages
    for name in names:
        logging.getLogger(name).removeHandler(handler)


def test_log_first_n_by_caller_and_by_message(collected: list[tuple[str, str]]) -> None:
    for i in range(4):
        log_first_n(logging.INFO, f"call {i}", n=2, name="d2l_test_logger")  # one call site: the first 2 calls
    for text in ["a", "b", "a"]:
        log_first_n(logging.INFO, text, key="message", name="d2l_test_logger")
    for text in ["x", "x"]:  # same call site and message
        log_first_n(logging.INFO, text, key=("caller", "message"), name="d2l_test_logger")
    assert [m for _, m in collected] == ["call 0", "call 1", "a", "b", "x"]
    with pytest.raises(ValueError, match="key must be 'caller', 'message' or a tuple of them, got 'line'"):
        log_first_n(logging.INFO, "m", key="line")


def test_log_every_n_logs_the_first_of_every_n_calls(collected: list[tuple[str, str]]) -> None:
    for i in range(7):
        log_every_n(logging.INFO, f"step {i}", n=3)  # the caller's module is the logger
    assert collected == [(__name__, "step 0"), (__name__, "step 3"), (__name__, "step 6")]


def test_log_every_n_seconds(collected: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 100.5, 101.2, 101.3])
    monkeypatch.setattr(logger, "time", SimpleNamespace(time=lambda: next(clock)))  # this module's clock only
    for i in range(4):
        log_every_n_seconds(logging.INFO, f"t{i}", n=1, name="d2l_test_logger")
    assert [m for _, m in collected] == ["t0", "t2"]  # at 100.0, then 101.2 (>= 1 s later)


def test_create_small_table_is_detectron2s_layout() -> None:
    # written out from detectron2's create_small_table (tabulate, pipe format) on the same dict
    assert create_small_table({"AP": 12.3456, "AP50": 0.5, "name": "ab", "n": 3}) == (
        "|   AP   |  AP50  |  name  |  n  |\n|:------:|:------:|:------:|:---:|\n| 12.346 | 0.500  |   ab   |  3  |"
    )


def test_setup_logger_file_layout_and_shared_file(tmp_path: Path) -> None:
    with restored_loggers():
        setup_logger(str(tmp_path), name="detectron2", configure_stdout=False)
        setup_logger(str(tmp_path), name="fvcore", configure_stdout=False)
        logging.getLogger("detectron2.data").info("first")
        logging.getLogger("fvcore.common").warning("second")
        assert (
            setup_logger(str(tmp_path), name="fvcore", configure_stdout=False).handlers
            == logging.getLogger("fvcore").handlers
        )  # cached: no second handler
        assert len(logging.getLogger("fvcore").handlers) == 1
        for handler in logging.getLogger("fvcore").handlers:
            handler.flush()
    assert log_records(tmp_path / "log.txt") == [("detectron2.data", "first"), ("fvcore.common", "second")]
    assert " detectron2.data INFO: first" in (tmp_path / "log.txt").read_text()


def test_console_abbreviates_detectron2_and_prefixes_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    with restored_loggers():
        setup_logger(name="detectron2", enable_propagation=True)
        assert logging.getLogger("detectron2").propagate is True
        logging.getLogger("detectron2.engine").info("hello")
        logging.getLogger("detectron2").warning("careful")
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(" d2.engine]: hello") and "\033" not in out[0]  # not a terminal: no colour codes
    assert out[1].startswith("WARNING [") and out[1].endswith(" d2]: careful")


def test_default_setup_sends_detectron2_and_fvcore_logs_to_log_txt(tmp_path: Path) -> None:
    from d2lightning.config import get_cfg

    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    with restored_loggers():
        default_setup(cfg, default_argument_parser().parse_args([]))
        logging.getLogger("detectron2.evaluation.testing").info("copypaste: AP,AP50")
        logging.getLogger("fvcore.common.checkpoint").info("Saving checkpoint to x")
        logging.getLogger("d2lightning.engine").info("ours")
        assert [type(h).__name__ for h in logging.getLogger("detectron2").handlers] == [
            "StreamHandler",
            "LogFileHandler",
        ]
        for name in ("detectron2", "fvcore", "d2lightning"):
            for handler in logging.getLogger(name).handlers:
                handler.flush()
    records = log_records(tmp_path / "log.txt")
    assert records[-3:] == [
        ("detectron2.evaluation.testing", "copypaste: AP,AP50"),
        ("fvcore.common.checkpoint", "Saving checkpoint to x"),
        ("d2lightning.engine", "ours"),  # d2lightning's own lines keep their logger name
    ]


def test_collect_env_info_finds_a_package_without_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "d2l_fake_detectron"
    package.mkdir()
    (package / "__init__.py").write_text('__version__ = "0.6"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert env._installed_version("d2l_fake_detectron") == f"0.6 @{package} (no package metadata)"
    assert env._installed_version("d2l_no_such_package") == "not installed"


def test_setup_custom_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "myenv.py"
    script.write_text("import os\ndef setup_environment():\n    os.environ['D2L_TEST_ENV_DONE'] = '1'\n")
    monkeypatch.delenv("D2L_TEST_ENV_DONE", raising=False)
    env.setup_custom_environment(str(script))
    assert __import__("os").environ["D2L_TEST_ENV_DONE"] == "1"
    (tmp_path / "noenv.py").write_text("x = 1\n")
    with pytest.raises(AttributeError, match="has no callable 'setup_environment'"):
        env.setup_custom_environment(str(tmp_path / "noenv.py"))
    with pytest.raises(ImportError, match="does not exist"):
        env.setup_custom_environment(str(tmp_path / "missing.py"))


def test_torch_version_and_doc_building() -> None:
    import torch

    assert tuple(int(x) for x in torch.__version__.split(".")[:2]) == env.TORCH_VERSION
    assert env.DOC_BUILDING is False
    namespace = {"thing": test_torch_version_and_doc_building}
    env.fixup_module_metadata("tests", namespace)  # a no-op unless documentation is being built
    assert test_torch_version_and_doc_building.__module__ == __name__ == sys.modules[__name__].__name__


# ---- a Lightning user who configured no logging -------------------------------------------------------------------

_WARMUP_WARNING = (
    "SOLVER.MAX_ITER (4) <= SOLVER.WARMUP_ITERS (10): the learning rate warms up during the whole run and never "
    "reaches SOLVER.BASE_LR (0.001); lower SOLVER.WARMUP_ITERS (e.g. to 1) or raise SOLVER.MAX_ITER"
)


def _plain_lightning_script(*args: str) -> list[str]:
    """The stderr lines of ``tests/jobs/plain_lightning_job.py`` (no logging configured unless asked), and its
    last stdout line (the ``d2lightning`` logger after the fit)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    job = REPO / "tests" / "jobs" / "plain_lightning_job.py"
    proc = subprocess.run([sys.executable, str(job), *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == "handlers=0 level=0"  # the console is gone after the fit
    return proc.stderr.splitlines()


def test_without_logging_configured_warnings_and_the_timer_summary_reach_stderr_once() -> None:
    lines = _plain_lightning_script()
    assert lines.count(_WARMUP_WARNING) == 1  # before the fit: Python's last resort, the bare message
    timer = [line for line in lines if "d2lightning.engine.hooks.iteration_timer]: " in line]
    assert len(timer) == 2, lines  # during the fit: d2lightning's console, INFO included
    assert re.fullmatch(r"\[\d\d/\d\d \d\d:\d\d:\d\d d2lightning\.engine\.hooks\.iteration_timer\]: "
                        r"Overall training speed: 2 iterations in .*", timer[0])  # fmt: skip
    assert "Total training time: " in timer[1]


def test_logging_configured_by_the_script_gets_every_line_once_and_no_console() -> None:
    lines = _plain_lightning_script("basicConfig")
    assert lines.count(f"configured WARNING d2lightning.solver.build: {_WARMUP_WARNING}") == 1
    assert [line for line in lines if "iteration_timer" in line] == [
        line for line in lines if line.startswith("configured INFO d2lightning.engine.hooks.iteration_timer: ")
    ]
    assert sum("Overall training speed" in line for line in lines) == 1
    assert not any(line.startswith("[") and "d2lightning." in line for line in lines)  # not d2lightning's console


def test_the_console_prints_only_what_no_other_handler_receives(capsys: pytest.CaptureFixture[str]) -> None:
    d2 = logging.getLogger("d2lightning")
    d2.propagate = False  # nothing configured on the way to the root (pytest's own handlers sit on the root)
    undo = logger.console_until_configured()
    assert d2.level == logging.INFO and len(d2.handlers) == 1
    logging.getLogger("d2lightning.x").info("alone")
    child = logging.getLogger("d2lightning.x")
    received: list[str] = []
    child.addHandler(handler := _Collect(received))
    try:
        child.info("configured meanwhile")
    finally:
        child.removeHandler(handler)
    undo()
    assert (d2.level, d2.handlers) == (logging.NOTSET, [])
    err = capsys.readouterr().err
    assert re.search(r"^\[\d\d/\d\d \d\d:\d\d:\d\d d2lightning\.x\]: alone$", err, re.MULTILINE), err
    assert "configured meanwhile" not in err and received == ["configured meanwhile"]
    d2.addHandler(logging.NullHandler())  # configured: nothing added
    assert logger.console_until_configured()() is None and len(d2.handlers) == 1 and d2.level == logging.NOTSET


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__()
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())

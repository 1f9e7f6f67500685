"""Flags after the config overrides (``d2lightning.cli_flags``): they work, and what cannot work is one line.

Parsing is checked in this process (``parse_command_line`` builds the real parsers, importing no torch); each
command-line case also runs the ``d2lightning`` command in a subprocess (status, one line, no traceback).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from d2lightning import cli
from d2lightning.cli_flags import FlagError, parse_command_line
from tests.helpers.cli import error_line, run_cli, tiny_args


def _parse(*argv: str) -> dict[str, object]:
    args = vars(parse_command_line(cli.build_parser, list(argv)))
    args.pop("func")
    return args


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # the new user's line: a flag after the overrides, the overrides kept in order
        (
            "train --config-file shapes_detector SOLVER.MAX_ITER 10 --resume OUTPUT_DIR out",
            {"resume": True, "opts": ["SOLVER.MAX_ITER", "10", "OUTPUT_DIR", "out"]},
        ),
        # flags with values, several of them, at the end and between overrides; a=b items and +a=b (LazyConfig)
        (
            "train SOLVER.MAX_ITER 10 --config-file x.yaml --num-gpus 2 OUTPUT_DIR out --eval-only",
            {
                "config_file": "x.yaml",
                "num_gpus": 2,
                "eval_only": True,
                "opts": ["SOLVER.MAX_ITER", "10", "OUTPUT_DIR", "out"],
            },
        ),
        (
            "train --config-file x.py train.max_iter=3 +train.x=1 --resume train.seed=2",
            {"resume": True, "opts": ["train.max_iter=3", "+train.x=1", "train.seed=2"]},
        ),
        (
            "eval --config-file x.yaml MODEL.WEIGHTS w.pth --resume",
            {"resume": True, "opts": ["MODEL.WEIGHTS", "w.pth"]},
        ),
        # a value that looks like a negative number is a value, not a flag
        ("train --config-file x.yaml SEED -1", {"resume": False, "opts": ["SEED", "-1"]}),
        (
            "predict --config-file x.yaml --input a.png --output b.png MODEL.DEVICE cpu --confidence-threshold 0.3",
            {"output": "b.png", "confidence_threshold": 0.3, "opts": ["MODEL.DEVICE", "cpu"]},
        ),
        ("plot out --output a.png", {"output_dir": "out", "output": "a.png"}),  # a command without overrides
        (
            "slurm submit --config-file x.yaml SOLVER.MAX_ITER 5 --dry-run --nodes 2",
            {"dry_run": True, "nodes": 2, "opts": ["SOLVER.MAX_ITER", "5"]},
        ),
    ],
)
def test_flags_after_the_overrides_are_flags(argv: str, expected: dict[str, object]) -> None:
    args = _parse(*argv.split())
    assert {k: args[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            "train --config-file x.yaml SOLVER.MAX_ITER 10 --gpus 2 OUTPUT_DIR out",
            "unrecognized arguments: --gpus (among the config overrides; d2lightning train --help lists the flags)",
        ),
        (
            "train --config-file x.yaml SOLVER.MAX_ITER --resume OUTPUT_DIR out",
            "Override 'SOLVER.MAX_ITER' has no value: the flag '--resume' follows it (give KEY VALUE pairs; flags go "
            "before the overrides, e.g. d2lightning train --resume --config-file FILE KEY VALUE)",
        ),
        (
            "train --config-file x.yaml SOLVER.MAX_ITER 10 --num-gpus two",
            "argument --num-gpus: invalid int value: 'two' (among the config overrides; d2lightning train --help "
            "lists the flags)",
        ),
        (  # a required flag: argparse misses it before anything can be moved
            "predict --config-file x.yaml --input a.png MODEL.DEVICE cpu --output=b.png",
            "--output came after the config overrides, where it is taken for one: write the flags first, e.g. "
            "d2lightning predict --output ... KEY VALUE",
        ),
    ],
)
def test_what_cannot_be_a_flag_is_named(argv: str, message: str) -> None:
    with pytest.raises(FlagError) as info:
        _parse(*argv.split())
    assert str(info.value) == message


def test_argparse_keeps_its_own_errors_elsewhere(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _parse("train", "--bogus")
    assert info.value.code == 2
    assert capsys.readouterr().err.endswith("d2lightning: error: unrecognized arguments: --bogus\n")


# ---- the command, in subprocesses ---------------------------------------------------------------------------------


def test_a_flag_after_the_overrides_takes_effect(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = run_cli(tiny_args(tmp_path, out, "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "2"))
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_cli([*tiny_args(tmp_path, out, "SOLVER.MAX_ITER", "5"), "--resume", "TEST.EVAL_PERIOD", "0"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Starting training from iteration 3" in resumed.stdout  # --resume was read


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (["SOLVER.MAX_ITER", "3", "--gpus", "2"], "unrecognized arguments: --gpus (among the config overrides; "),
        (["SOLVER.MAX_ITER", "--resume"], "Override 'SOLVER.MAX_ITER' has no value: the flag '--resume' follows it"),
    ],
)
def test_a_misplaced_or_unknown_flag_is_one_line(tmp_path: Path, opts: list[str], message: str) -> None:
    result = run_cli(tiny_args(tmp_path, tmp_path / "run", *opts))
    assert error_line(result).startswith(message)
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert not (tmp_path / "run").exists()  # refused before anything was written

"""Tests for ``default_argument_parser`` against detectron2's observed namespaces (detectron2-oracle.json)."""

from __future__ import annotations

import argparse
import os
import sys

import pytest

from d2lightning.engine.defaults import default_argument_parser

# detectron2-oracle.json "argument_parser" cases, observed with uid 0.
ORACLE_CASES = [
    (
        [],
        {
            "config_file": "",
            "resume": False,
            "eval_only": False,
            "num_gpus": 1,
            "num_machines": 1,
            "machine_rank": 0,
            "dist_url": "tcp://127.0.0.1:49152",
            "opts": [],
        },
    ),
    (
        ["--config-file", "x.yaml", "--num-gpus", "4", "MODEL.WEIGHTS", "w.pth", "SOLVER.IMS_PER_BATCH", "8"],
        {
            "config_file": "x.yaml",
            "resume": False,
            "eval_only": False,
            "num_gpus": 4,
            "num_machines": 1,
            "machine_rank": 0,
            "dist_url": "tcp://127.0.0.1:49152",
            "opts": ["MODEL.WEIGHTS", "w.pth", "SOLVER.IMS_PER_BATCH", "8"],
        },
    ),
    (
        [
            "--eval-only",
            "--resume",
            "--num-machines",
            "3",
            "--machine-rank",
            "2",
            "--dist-url",
            "tcp://10.0.0.1:999",
        ],
        {
            "config_file": "",
            "resume": True,
            "eval_only": True,
            "num_gpus": 1,
            "num_machines": 3,
            "machine_rank": 2,
            "dist_url": "tcp://10.0.0.1:999",
            "opts": [],
        },
    ),
]


@pytest.mark.parametrize(("argv", "expected"), ORACLE_CASES)
def test_oracle_namespaces(monkeypatch, argv, expected):
    monkeypatch.setattr(os, "getuid", lambda: 0)
    assert vars(default_argument_parser().parse_args(argv)) == expected


@pytest.mark.parametrize(("uid", "port"), [(0, 49152), (1000, 50152), (16384, 49152), (16385, 49153)])
def test_dist_url_port_rule(monkeypatch, uid, port):
    monkeypatch.setattr(os, "getuid", lambda: uid)
    assert default_argument_parser().parse_args([]).dist_url == f"tcp://127.0.0.1:{port}"


def test_windows_uses_uid_1(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")
    assert default_argument_parser().parse_args([]).dist_url == "tcp://127.0.0.1:49153"


def test_assignment_overrides_pass_through_opts():
    args = default_argument_parser().parse_args(["--config-file", "c.yaml", "SOLVER.MAX_ITER=10", "SEED", "3"])
    assert args.opts == ["SOLVER.MAX_ITER=10", "SEED", "3"]


def test_epilog_and_formatter():
    parser = default_argument_parser(epilog="my usage")
    assert parser.epilog == "my usage"
    assert parser.formatter_class is argparse.RawDescriptionHelpFormatter
    assert "--num-gpus 8 --config-file cfg.yaml" in default_argument_parser().epilog
    with pytest.raises(TypeError, match="epilog must be a str or None, got int"):
        default_argument_parser(epilog=3)  # type: ignore[arg-type]

"""Flags given after the config overrides: ``d2lightning train --config-file X SOLVER.MAX_ITER 10 --resume``.

detectron2's ``default_argument_parser`` (and the ``d2lightning`` commands built on it) collects everything after
the first override as ``opts`` (``argparse.REMAINDER``), so a flag written after an override used to end up as a
config key ("Unknown config key '--resume'") or left a key without its value. :func:`move_flags_before_overrides`
gives such flags their meaning: the command line is parsed again with the flags moved before the overrides,
keeping the overrides in their order. A flag the command does not take, and a flag where an override's value should
be, end in one line naming it. Imports nothing heavy.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence

__all__ = ["FlagError", "command_name", "move_flags_before_overrides", "parse_command_line"]

# a.b=c (+a.b=c adds a LazyConfig key): one item, as apply_overrides and LazyConfig.apply_overrides read it
_ASSIGNMENT = re.compile(r"\+?[A-Za-z_][A-Za-z0-9_.]*=.*", re.DOTALL)


class FlagError(ValueError):
    """A flag among the config overrides that the command does not take, or that stands where a value should."""


class _Refused(Exception):
    """argparse's error while parsing again, as an exception rather than a usage text and exit status 2."""


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _Refused(message)


def _looks_like_a_flag(item: str) -> bool:
    return (item.startswith("--") and len(item) > 2) or (len(item) == 2 and item[0] == "-" and item[1].isalpha())


def command_name(argv: Sequence[str]) -> str:
    """The command ``argv`` runs, for messages: ``"train"``, ``"slurm submit"``."""
    words = list(argv[:2]) if argv[:1] == ["slurm"] else list(argv[:1])
    return " ".join(w for w in words if not w.startswith("-"))


def parse_command_line(
    build_parser: Callable[[type[argparse.ArgumentParser]], argparse.ArgumentParser], argv: Sequence[str]
) -> argparse.Namespace:
    """Parse ``argv`` with the parser ``build_parser`` builds, flags after the overrides included.

    argparse's own errors (usage and status 2) stay as they are, except a required flag that was given after the
    overrides (argparse then reports it missing): that is a :class:`FlagError` naming it.

    Raises:
        FlagError: see :func:`move_flags_before_overrides`, and a required flag after the overrides.
    """
    argv = list(argv)
    try:
        args = build_parser(_RaisingParser).parse_args(argv)
    except _Refused as e:
        _raise_if_required_flag_came_late(str(e), argv)
        build_parser(argparse.ArgumentParser).parse_args(argv)  # argparse's usage and error, status 2
        raise  # not reached: the line above exits
    return move_flags_before_overrides(build_parser, argv, args, command_name(argv))


def _raise_if_required_flag_came_late(message: str, argv: list[str]) -> None:
    prefix = "the following arguments are required: "
    if not message.startswith(prefix):
        return
    for name in message.removeprefix(prefix).split(", "):
        if name in argv or any(item.startswith(name + "=") for item in argv):
            raise FlagError(
                f"{name} came after the config overrides, where it is taken for one: write the flags first, "
                f"e.g. d2lightning {command_name(argv)} {name} ... KEY VALUE"
            )


def move_flags_before_overrides(
    build_parser: Callable[[type[argparse.ArgumentParser]], argparse.ArgumentParser],
    argv: Sequence[str],
    args: argparse.Namespace,
    command: str,
) -> argparse.Namespace:
    """``args`` of ``argv`` parsed again as if every flag in ``args.opts`` had come before the overrides.

    Overrides are read as :func:`d2lightning.config.apply_overrides` reads them: ``KEY VALUE`` pairs and ``a.b=c``
    items; a flag is looked for where a key would be. Overrides keep their order.

    Args:
        build_parser: builds the parser that made ``args``, given the class of its parsers (called with one whose
            ``error`` raises instead of exiting).
        argv: the arguments the command was given.
        args: what ``parser`` made of them (with an ``opts`` list).
        command: the command's name, for messages (``"train"``).

    Returns:
        ``args`` itself when no flag follows an override, else the namespace of the reordered command line.

    Raises:
        FlagError: naming a flag the command does not take (or one whose value is wrong), and where flags go; or
            naming an override whose value is a flag.
    """
    parser = build_parser(_RaisingParser)
    before: list[str] = []
    for _ in range(len(argv)):  # each round moves at least one flag: a bound, not a retry
        opts = list(getattr(args, "opts", None) or [])  # (commands without overrides, e.g. plot, have none)
        flag_at = _first_flag(opts, command)
        if flag_at is None or list(argv[len(argv) - len(opts) :]) != opts:  # (not the tail of argv: argparse's "--")
            if before:
                args.opts = before + opts
            return args
        before += opts[:flag_at]
        head = list(argv[: len(argv) - len(opts)])
        argv = head + opts[flag_at:]
        try:
            args = parser.parse_args(argv)
        except _Refused as e:
            raise FlagError(f"{e} (among the config overrides; d2lightning {command} --help lists the flags)") from None
    return args


def _first_flag(opts: list[str], command: str) -> int | None:
    """The index of the first flag in key position of ``opts``, or None.

    Raises:
        FlagError: an override's value is a flag.
    """
    i = 0
    while i < len(opts):
        item = opts[i]
        if _looks_like_a_flag(item):
            return i
        if _ASSIGNMENT.fullmatch(item):
            i += 1
            continue
        if i + 1 < len(opts) and _looks_like_a_flag(opts[i + 1]):
            raise FlagError(
                f"Override {item!r} has no value: the flag {opts[i + 1]!r} follows it (give KEY VALUE pairs; "
                f"flags go before the overrides, e.g. d2lightning {command} {opts[i + 1]} --config-file FILE KEY VALUE)"
            )
        i += 2
    return None

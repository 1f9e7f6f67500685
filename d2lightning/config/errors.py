"""Errors raised by ``d2lightning.config``.

yacs raises bare ``KeyError`` / ``ValueError`` / ``AttributeError`` / ``AssertionError`` whose messages often
lack the file the bad key came from. Every error here is a :class:`ConfigError` (a ``ValueError``) whose
message names the full dotted key, where the value came from (a file or a command-line override) and what
is accepted. The subclasses also derive from the builtin yacs (or detectron2) raises in the same situation, so existing
``except KeyError:`` / ``except AttributeError:`` / ``except ImportError:`` code keeps working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

__all__ = [
    "ConfigError",
    "ConfigFileError",
    "ConfigImportError",
    "ConfigTypeError",
    "FrozenConfigError",
    "UnknownKeyError",
]


class ConfigError(ValueError):
    """Base class of every config error; also a ``ValueError``.

    Attributes:
        key: the full dotted key concerned (``"SOLVER.BASE_LR"``), or None.
        origin: where the value came from (``"file 'a.yaml'"``, ``"override 'X=1'"``), or None.
    """

    def __init__(self, message: str, *, key: str | None = None, origin: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.origin = origin

    def __str__(self) -> str:
        # KeyError.__str__ would wrap the message in quotes; always show the plain message.
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[Any, ...]:
        # keyword-only arguments (path=...) would be lost by BaseException's pickling: rebuild from the attributes
        attributes = dict(self.__dict__)
        if isinstance(self, ImportError):  # ImportError keeps `path` in a slot of its own
            attributes["path"] = self.path
        return _rebuild, (type(self), self.args, attributes)


def _rebuild(cls: type[ConfigError], args: tuple[Any, ...], attributes: dict[str, Any]) -> ConfigError:
    """A pickled config error, as it was (an error raised in a launched worker reaches the parent so)."""
    error = cls.__new__(cls)
    error.args = args
    for name, value in attributes.items():
        setattr(error, name, value)
    return error


class UnknownKeyError(ConfigError, KeyError, AttributeError):
    """A key that the config does not define (from a file, an override, or attribute access).

    Also a ``KeyError`` (what yacs raises when merging) and an ``AttributeError`` (so ``hasattr`` and
    ``getattr(cfg, name, default)`` behave as on any object). ``suggestion`` holds the closest valid key.
    """

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        origin: str | None = None,
        suggestion: str | None = None,
    ) -> None:
        super().__init__(message, key=key, origin=origin)
        self.suggestion = suggestion


class ConfigTypeError(ConfigError, TypeError):
    """A value of the wrong type or outside the accepted domain for its key."""


class FrozenConfigError(ConfigError, AttributeError):
    """An attempt to change a frozen config (yacs raises ``AttributeError`` here)."""


class ConfigFileError(ConfigError):
    """A config file that is missing, unreadable, not valid YAML, or has a bad ``_BASE_`` chain.

    Attributes:
        path: the file concerned.
    """

    def __init__(self, message: str, *, path: str, key: str | None = None) -> None:
        super().__init__(message, key=key, origin=f"file {path!r}")
        self.path = path


class ConfigImportError(ConfigFileError, ImportError):  # type: ignore[misc]  # path: str, ImportError's str | None
    """A relative import in a Python config file that does not name a config file (a missing file, a folder).

    Also an ``ImportError``, what detectron2's ``LazyConfig.load`` raises there.
    """


def closest_key(key: str, candidates: Iterable[str]) -> str | None:
    """Return the candidate closest to ``key`` (difflib ratio >= 0.6, case-insensitive), or None."""
    by_upper: dict[str, str] = {}
    for cand in candidates:
        by_upper.setdefault(cand.upper(), cand)
    matches = difflib.get_close_matches(key.upper(), list(by_upper), n=1, cutoff=0.6)
    return by_upper[matches[0]] if matches else None


_NOT_IN_DEFAULTS = (
    " It is not defined by the defaults (get_cfg()); a model declares its own keys with "
    "d2lightning.config.extend_defaults()."
)


def unknown_key_error(
    key: str, candidates: Iterable[str], origin: str | None, otherwise: str = _NOT_IN_DEFAULTS
) -> UnknownKeyError:
    """Build the :class:`UnknownKeyError` for ``key``, suggesting the closest of ``candidates``.

    ``otherwise`` ends the message when no candidate is close.
    """
    suggestion = closest_key(key, candidates)
    message = f"Unknown config key {key!r}{in_origin(origin)}."
    message += f" Did you mean {suggestion!r}?" if suggestion is not None else otherwise
    return UnknownKeyError(message, key=key, origin=origin, suggestion=suggestion)


def in_origin(origin: str | None) -> str:
    """Format ``origin`` as a message fragment: ``" (in file 'a.yaml')"`` or ``""``."""
    return f" (in {origin})" if origin else ""

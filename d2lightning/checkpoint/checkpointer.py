"""fvcore's ``Checkpointer`` (``fvcore.common.checkpoint``), with crash-safe writes and Lightning's full state.

Same constructor, methods, file layout and log messages as fvcore's, which detectron2 uses everywhere. What
d2lightning adds:

- every file (checkpoint and ``last_checkpoint``) is written atomically (:mod:`.atomic`), and each checkpoint
  carries a CRC-32 of its content that every load verifies (:mod:`.integrity`);
- a checkpoint saved during a Lightning fit of the model also holds Lightning's full state, so the file is a
  valid ``Trainer.fit(ckpt_path=...)`` (:mod:`.lightning_state`; the fit sets :attr:`Checkpointer.training_state`);
- a damaged file (empty, cut short, foreign bytes, a checksum mismatch) raises :class:`CorruptCheckpointError`
  naming it, and :meth:`Checkpointer.resume_or_load` then falls back to the newest readable checkpoint of the
  directory — also when ``last_checkpoint`` itself is unreadable — with a warning naming both files.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from d2lightning.checkpoint.atomic import atomic_save, atomic_write_text, remove_stale_temp_files
from d2lightning.checkpoint.integrity import CorruptCheckpointError, verify_checkpoint
from d2lightning.checkpoint.lightning_state import merge_lightning_state, pop_lightning_state
from d2lightning.checkpoint.model_loading import IncompatibleKeys, load_model_state, log_incompatible_keys
from d2lightning.utils.sharding import holds_shards

__all__ = ["Checkpointer", "CorruptCheckpointError", "is_checkpoint_file_name"]

_LAST = "last_checkpoint"
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


class Checkpointer:
    """Save and load a model plus any other objects with ``state_dict()``/``load_state_dict()``.

    Mirrors fvcore's ``Checkpointer``. :meth:`save` writes ``{"model": model.state_dict(), <key>:
    obj.state_dict() for each checkpointable, **extra}`` to ``save_dir/{name}.pth`` and the basename into
    ``save_dir/last_checkpoint``; :meth:`load` restores them and returns what is left (``{"iteration": N}``).
    A checkpointable can be anything with those two methods, the trainer included:
    ``Checkpointer(model, dir, optimizer=opt, trainer=trainer)`` saves ``trainer.state_dict()``
    (``{"iteration", "hooks", "optimizer"...}``) and ``resume_or_load`` restores ``trainer.iter`` and the hooks.

    Files are read with ``torch.load(weights_only=True)``; set ``checkpointer.weights_only = False`` to read
    a trusted file that holds other Python objects.

    Args:
        model: the model; a ``DistributedDataParallel``/``DataParallel`` wrapper is unwrapped.
        save_dir: the directory of the checkpoints and of ``last_checkpoint``; ``""`` disables saving.
        save_to_disk: False disables saving (e.g. on non-main processes).
        **checkpointables: the other objects, saved under their keyword.

    Raises:
        TypeError: when ``model`` is not a ``torch.nn.Module`` or a checkpointable has no ``state_dict``.
        ValueError: when a checkpointable is named ``"model"``.

    Example::

        checkpointer = Checkpointer(model, "output", optimizer=optimizer, trainer=trainer)
        checkpointer.save("model_0000999", iteration=999)
        start_iter = checkpointer.resume_or_load("", resume=True).get("iteration", -1) + 1
    """

    weights_only: bool = True
    #: Set by a Lightning fit that trains this checkpointer's model, for its duration: returns the fit's full
    #: Lightning state (or why it cannot be had), which :meth:`save` adds to the file. None otherwise.
    training_state: Callable[[], dict[str, Any] | str] | None = None

    def __init__(
        self, model: nn.Module, save_dir: str = "", *, save_to_disk: bool = True, **checkpointables: Any
    ) -> None:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        if not isinstance(model, nn.Module):
            raise TypeError(f"Checkpointer model must be a torch.nn.Module, got {type(model).__qualname__}")
        self.model = model
        self.checkpointables: dict[str, Any] = {}
        for key, obj in checkpointables.items():
            self.add_checkpointable(key, obj)
        self.logger = logging.getLogger(__name__)
        self.save_dir = os.fspath(save_dir)
        self.save_to_disk = save_to_disk
        self._lightning_warning: str | None = None

    def add_checkpointable(self, key: str, checkpointable: Any) -> None:
        """Track another object, saved under ``key``.

        Raises:
            KeyError: when ``key`` is already used (as fvcore).
            ValueError: when ``key`` is ``"model"``.
            TypeError: when the object has no ``state_dict`` method.
        """
        if key in self.checkpointables:
            raise KeyError(f"Key {key} already used in the Checkpointer")
        if key == "model":
            raise ValueError("a checkpointable cannot be named 'model': that key holds the model's weights")
        if not callable(getattr(checkpointable, "state_dict", None)):
            raise TypeError(
                f"checkpointable {key!r} ({type(checkpointable).__qualname__}) needs a 'state_dict()' method"
            )
        self.checkpointables[key] = checkpointable

    # ------------------------------------------------------------------ saving
    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``save_dir/{name}.pth`` atomically, then point ``last_checkpoint`` at it.

        Does nothing when ``save_dir`` is empty or ``save_to_disk`` is False. During a Lightning fit of the
        model the file also holds Lightning's full state (see :mod:`d2lightning.checkpoint.lightning_state`).

        Args:
            name: the file name without ``.pth``; no directory part.
            **kwargs: extra entries, e.g. ``iteration=999``.

        Raises:
            ValueError: when ``name`` contains a directory part.
            RuntimeError: when the model is sharded (FSDP) and its state is not the full one (outside the iterations
                at which the ranks gather it).
        """
        if not self.save_dir or not self.save_to_disk:
            return
        basename = f"{name}.pth"
        if os.path.basename(basename) != basename:
            raise ValueError(f"checkpoint name must be a file name without directory, got {name!r}")
        data: dict[str, Any] = {"model": self.model.state_dict()}
        if holds_shards(data["model"]):
            raise RuntimeError(
                f"Cannot save {name!r}: the model is sharded (FSDP) and its state holds this rank's shards only, which "
                "no single process could load. Save from a checkpointing hook during training (every rank gathers "
                "the full state at its iterations), or get the full weights with "
                "d2lightning.utils.sharding.full_state_dict(model) on every rank"
            )
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        reason = self._add_training_state(data)
        if reason is not None and reason != self._lightning_warning:
            self._lightning_warning = reason
            self.logger.warning(reason)
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        os.makedirs(self.save_dir, exist_ok=True)
        atomic_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def _add_training_state(self, data: dict[str, Any]) -> str | None:
        """Add the running fit's Lightning state to ``data``; return why not when it cannot be added."""
        if self.training_state is None:
            return None
        state = self.training_state()
        if isinstance(state, str):
            return state
        return merge_lightning_state(data, state)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Write ``last_filename_basename`` into ``save_dir/last_checkpoint`` (atomically)."""
        atomic_write_text(os.path.join(self.save_dir, _LAST), last_filename_basename)

    # ------------------------------------------------------------------ finding
    def has_checkpoint(self) -> bool:
        """Whether ``save_dir/last_checkpoint`` exists."""
        return os.path.exists(os.path.join(self.save_dir, _LAST))

    def get_checkpoint_file(self) -> str:
        """The path ``last_checkpoint`` names, or ``""`` when there is none or it cannot be read."""
        last_saved, _ = self._read_last_checkpoint()
        return os.path.join(self.save_dir, last_saved) if last_saved else ""

    def _read_last_checkpoint(self) -> tuple[str, str]:
        """``(file name, "")`` from ``last_checkpoint``, or ``("", why it cannot be used)``."""
        try:
            with open(os.path.join(self.save_dir, _LAST), "rb") as f:
                raw = f.read(4097)
        except OSError as e:
            return "", f"it cannot be read ({e.strerror or e})"
        try:
            name = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            return "", "it is not text (damaged)"
        if not name or len(raw) > 4096 or "\n" in name or "\0" in name:
            return "", "it does not hold a file name (empty or damaged)"
        return name, ""

    def get_all_checkpoint_files(self) -> list[str]:
        """Every ``.pth`` file in ``save_dir``, sorted by name."""
        if not os.path.isdir(self.save_dir):
            return []
        return [
            os.path.join(self.save_dir, f)
            for f in sorted(os.listdir(self.save_dir))
            if f.endswith(".pth") and os.path.isfile(os.path.join(self.save_dir, f))
        ]

    # ------------------------------------------------------------------ loading
    def load(self, path: str, checkpointables: Iterable[str] | None = None) -> dict[str, Any]:
        """Load the model and checkpointables from ``path``; return the remaining entries.

        An empty ``path`` loads nothing and returns ``{}``. The weights load non-strictly (``module.``
        prefixes stripped, shape mismatches dropped, missing/unexpected keys logged). Lightning's keys of a
        combined file are not returned.

        Args:
            path: the checkpoint file.
            checkpointables: names of the checkpointables to load; None loads all of them, ``[]`` none.

        Raises:
            FileNotFoundError: naming ``path`` when it does not exist.
            CorruptCheckpointError: naming ``path`` when it cannot be read.
            ValueError: naming an unknown checkpointable.
        """
        if not path:
            self.logger.info("No checkpoint found. Initializing model from scratch")
            return {}
        names = self._checkpointable_names(checkpointables)
        self.logger.info(f"[Checkpointer] Loading from {path} ...")
        return self._restore(path, self._read(path), names)

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """Resume from ``last_checkpoint`` when ``resume`` and it exists, else load only the weights of ``path``.

        Resuming loads everything (model and every checkpointable). When ``last_checkpoint`` cannot be read, or
        the file it names is missing or damaged, the other checkpoints of ``save_dir`` are tried newest first
        (by modification time) and the first readable one is used, with a warning naming both files. With
        ``resume``, a process that saves (``save_to_disk``) first deletes the temporary files of saves that
        were killed (never those of a save in progress, see :mod:`.atomic`).

        Raises:
            CorruptCheckpointError: when no checkpoint of ``save_dir`` can be read; the one-line message lists
                each file and what is wrong with it.
        """
        if resume and self.save_dir and self.save_to_disk:
            for stale in remove_stale_temp_files(self.save_dir, is_checkpoint_file_name):
                self.logger.info(f"Removed {stale}, left by an interrupted save")
        if resume and self.has_checkpoint():
            return self._resume()
        return self.load(path, checkpointables=[])

    def _resume(self) -> dict[str, Any]:
        name, problem = self._read_last_checkpoint()
        last = os.path.join(self.save_dir, name) if name else ""
        pointer = os.path.join(self.save_dir, _LAST)
        if problem:
            self.logger.warning(f"Cannot use {pointer}: {problem}")
        others = sorted(
            (f for f in self.get_all_checkpoint_files() if f != last), key=lambda f: (_mtime(f), f), reverse=True
        )
        failures: list[str] = []
        for candidate in [last, *others] if last else others:
            self.logger.info(f"[Checkpointer] Loading from {candidate} ...")
            try:
                checkpoint = self._read(candidate)
            except (FileNotFoundError, CorruptCheckpointError) as e:
                self.logger.warning(f"Cannot resume from {candidate}: {e}")
                failures.append(f"{os.path.basename(candidate)} ({_reason(e, candidate)})")
                continue
            if candidate != last:
                unusable = f"{last} (named by {pointer}, unreadable)" if last else f"{pointer} ({problem})"
                self.logger.warning(
                    f"Resuming from {candidate} instead of {unusable}: the newest readable checkpoint in the directory"
                )
            return self._restore(candidate, checkpoint, list(self.checkpointables))
        if problem:
            failures.insert(0, f"{_LAST} ({problem})")
        raise CorruptCheckpointError(
            f"No checkpoint in {self.save_dir!r} can be read: {'; '.join(failures) or 'there is none'}. Delete or "
            "replace the damaged files, or train into another OUTPUT_DIR"
        )

    def _checkpointable_names(self, checkpointables: Iterable[str] | None) -> list[str]:
        if checkpointables is None:
            return list(self.checkpointables)
        names = list(checkpointables)
        unknown = [n for n in names if n not in self.checkpointables]
        if unknown:
            raise ValueError(
                f"checkpointables {unknown} are not tracked by this checkpointer; known: {list(self.checkpointables)}"
            )
        return names

    def _read(self, path: str) -> dict[str, Any]:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Checkpoint {path} not found!")
        checkpoint = self._load_file(path)
        pop_lightning_state(checkpoint)
        return checkpoint

    def _restore(self, path: str, checkpoint: dict[str, Any], names: list[str]) -> dict[str, Any]:
        if "model" not in checkpoint:
            raise ValueError(f"Checkpoint {path} has no 'model' entry (it has {sorted(checkpoint)})")
        incompatible = self._load_model(checkpoint)
        if incompatible is not None:
            self._log_incompatible_keys(incompatible)
        for key in names:
            if key in checkpoint:
                self.logger.info(f"Loading {key} from {path} ...")
                self.checkpointables[key].load_state_dict(checkpoint.pop(key))
        return checkpoint

    def _load_file(self, f: str) -> dict[str, Any]:
        """Read a checkpoint file (on CPU) after checking it is intact. Subclasses add formats.

        Raises:
            CorruptCheckpointError: naming the file when it is empty, truncated, not a torch file, or its
                checksum does not match (see :func:`.integrity.verify_checkpoint`).
            pickle.UnpicklingError: naming the file when it is intact but holds objects ``weights_only``
                refuses.
        """
        verify_checkpoint(f)
        try:
            loaded = torch.load(f, map_location=torch.device("cpu"), weights_only=self.weights_only)
        except pickle.UnpicklingError as e:
            refused = _REFUSED_GLOBAL.search(str(e))
            if refused is None:  # not torch's refusal of a class: the pickled data itself is damaged
                raise CorruptCheckpointError(
                    f"Checkpoint {f} is truncated or corrupt: its pickled data cannot be read"
                ) from e
            raise pickle.UnpicklingError(
                f"Checkpoint {f} holds objects that torch.load(weights_only=True) refuses ({refused.group(1)}); "
                "if you trust the file, set checkpointer.weights_only = False"
            ) from e
        except Exception as e:  # a damaged file can fail anywhere in torch's reader
            raise CorruptCheckpointError(f"Checkpoint {f} is truncated or corrupt: {_first_line(e)}") from e
        if not isinstance(loaded, dict):
            raise CorruptCheckpointError(f"Checkpoint {f} holds a {type(loaded).__qualname__}, not a dict")
        return loaded

    def _load_model(self, checkpoint: dict[str, Any]) -> IncompatibleKeys:
        """Load ``checkpoint.pop("model")`` into the model (see :func:`.model_loading.load_model_state`)."""
        return load_model_state(self.model, checkpoint.pop("model"))

    def _log_incompatible_keys(self, incompatible: IncompatibleKeys) -> None:
        log_incompatible_keys(self.logger, self.model, incompatible)


def is_checkpoint_file_name(name: str) -> bool:
    """Whether a checkpointer writes files of this name: ``last_checkpoint`` and ``*.pth``."""
    return name == _LAST or name.endswith(".pth")


def _reason(error: Exception, path: str) -> str:
    """What is wrong with ``path``, from the error about it, without repeating its name."""
    text = str(error)
    for prefix in (f"Checkpoint {path} is truncated or corrupt: ", f"Checkpoint {path} "):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:  # deleted meanwhile: try it last
        return float("-inf")

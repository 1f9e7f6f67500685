"""d2lightning.checkpoint.integrity: the checksum inside each file, damage detection, and the resume fallback.

Every kind of damage a checkpoint can suffer — empty, cut short, foreign bytes, not a zip archive, flipped bits
that torch.load itself reads without complaint — is a ``CorruptCheckpointError`` naming the file and what is
wrong, and resuming falls back to the newest readable checkpoint with a warning naming both files.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import random
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from d2lightning._compat import DETECTRON2_MISSING_REASON, detectron2_available
from d2lightning.checkpoint import CorruptCheckpointError, DetectionCheckpointer
from d2lightning.checkpoint.atomic import atomic_save
from d2lightning.checkpoint.integrity import SealingWriter, verify_checkpoint
from d2lightning.engine import SimpleTrainer, hooks
from tests.helpers.checkpoint import empty, flip_bytes, loader_from, plain_pickle, plain_text, random_bytes, truncate
from tests.helpers.training import SimpleModel


def _trainer(out: Path, start: int = 0) -> tuple[SimpleTrainer, DetectionCheckpointer]:
    torch.manual_seed(0)
    model = SimpleModel()
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    trainer = SimpleTrainer(model, loader_from(start), optimizer)
    checkpointer = DetectionCheckpointer(model, str(out), optimizer=optimizer, trainer=trainer)
    trainer.register_hooks([hooks.PeriodicCheckpointer(checkpointer, 5)])
    return trainer, checkpointer


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model_0000004.pth, model_0000009.pth, model_final.pth (iteration 11) and last_checkpoint, in write order."""
    out = tmp_path_factory.mktemp("trained")
    trainer, _ = _trainer(out)
    trainer.train(0, 12)
    for i, name in enumerate(["model_0000004.pth", "model_0000009.pth", "model_final.pth"]):
        os.utime(out / name, (1000 + i, 1000 + i))  # write order, whatever the clock resolution
    return out


def _copy(trained: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    for p in trained.iterdir():
        (out / p.name).write_bytes(p.read_bytes())
        os.utime(out / p.name, (p.stat().st_mtime, p.stat().st_mtime))
    return out


NOT_TORCH = "it is not a PyTorch file (neither a zip archive nor torch's legacy format)"
DAMAGE: list[tuple[Callable[[Path], None], str]] = [
    (
        flip_bytes,
        "its content does not match the CRC-32 checksum saved with it (the file changed after it was written: "
        "damaged on disk or in transfer)",
    ),
    (random_bytes, NOT_TORCH),
    (plain_text, NOT_TORCH),
    (plain_pickle, NOT_TORCH),
    (
        truncate,
        "the zip archive is incomplete (File is not a zip file): the write was cut short or the file damaged",
    ),
    (empty, "the file is empty (0 bytes)"),
]
IDS = [damage.__name__ for damage, _ in DAMAGE]


# ---- the checksum ------------------------------------------------------------------------------------------------


def test_saved_files_carry_their_crc32_and_still_load_everywhere(tmp_path: Path) -> None:
    state = {"model": {"w": torch.arange(10.0)}, "iteration": 3}
    atomic_save(state, tmp_path / "sealed.pth")
    atomic_save(state, tmp_path / "plain.pth", checksum=False)
    sealed, plain = (tmp_path / "sealed.pth").read_bytes(), (tmp_path / "plain.pth").read_bytes()
    comment = zipfile.ZipFile(tmp_path / "sealed.pth").comment
    assert comment.startswith(b"d2lightning-crc32:") and len(comment) == 18 + 8
    assert sealed[: len(plain) - 2] == plain[:-2]  # torch's bytes, only the comment length changed
    assert len(sealed) == len(plain) + len(comment)
    loaded = torch.load(tmp_path / "sealed.pth", weights_only=True)  # what detectron2 and Lightning call
    assert torch.equal(loaded["model"]["w"], torch.arange(10.0)) and loaded["iteration"] == 3
    assert zipfile.ZipFile(tmp_path / "sealed.pth").testzip() is None
    assert verify_checkpoint(str(tmp_path / "sealed.pth")) is True
    assert verify_checkpoint(str(tmp_path / "plain.pth")) is False  # an unsealed zip: its CRC-32s are checked


def test_sealing_writer_hashes_writes_of_any_size(tmp_path: Path) -> None:
    """torch writes records of every size; the checksum must not depend on how the bytes were split."""
    buffer = io.BytesIO()
    torch.save({"a": torch.zeros(3)}, buffer)
    archive = buffer.getvalue()
    for split in (1, 7, 21, 22, 23, 4096):
        path = tmp_path / f"split{split}.pth"
        with open(path, "wb") as f:
            writer = SealingWriter(f)
            for i in range(0, len(archive), split):
                writer.write(archive[i : i + split])
            writer.seal()
        assert verify_checkpoint(str(path)) is True
        assert path.read_bytes() == (tmp_path / "split1.pth").read_bytes()


def test_sealing_refuses_an_archive_without_a_plain_end_record(tmp_path: Path) -> None:
    with open(tmp_path / "x", "wb") as f:
        writer = SealingWriter(f)
        writer.write(b"not a zip archive at all, long enough to fill the tail")
        with pytest.raises(RuntimeError, match="did not end its archive with a plain zip end record"):
            writer.seal()


@pytest.mark.parametrize(("damage", "reason"), DAMAGE, ids=IDS)
def test_each_kind_of_damage_is_named(trained: Path, tmp_path: Path, damage: Callable, reason: str) -> None:
    path = _copy(trained, tmp_path) / "model_final.pth"
    damage(path)
    with pytest.raises(CorruptCheckpointError) as error:
        verify_checkpoint(str(path))
    assert str(error.value) == f"Checkpoint {path} is truncated or corrupt: {reason}"


def test_flipped_bytes_that_torch_loads_silently_are_caught(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    atomic_save({"model": {"w": torch.arange(1000.0)}}, path)
    flip_bytes(path)
    loaded = torch.load(path, weights_only=True)  # torch alone reads the damaged weights without a word
    assert not torch.equal(loaded["model"]["w"], torch.arange(1000.0))
    _, checkpointer = _trainer(tmp_path / "other")
    with pytest.raises(CorruptCheckpointError, match="does not match the CRC-32 checksum"):
        checkpointer.load(str(path))


def test_an_unsealed_zip_with_flipped_bytes_fails_its_crc(tmp_path: Path) -> None:
    path = tmp_path / "detectron2_style.pth"
    torch.save({"model": {"w": torch.arange(100.0)}}, path)  # written by torch.save alone, as detectron2 does
    flip_bytes(path)
    with pytest.raises(CorruptCheckpointError, match=r"the CRC-32 of its record '.*/data/0' does not match"):
        verify_checkpoint(str(path))


def test_weights_only_hint_only_for_an_intact_file(tmp_path: Path) -> None:
    _, checkpointer = _trainer(tmp_path / "out")
    atomic_save({"model": {}, "extra": logging.getLogger("x").__class__}, tmp_path / "objects.pth")
    with pytest.raises(pickle.UnpicklingError) as refused:
        checkpointer.load(str(tmp_path / "objects.pth"))
    assert str(refused.value) == (
        f"Checkpoint {tmp_path / 'objects.pth'} holds objects that torch.load(weights_only=True) refuses "
        "(logging.Logger); if you trust the file, set checkpointer.weights_only = False"
    )
    for damage, _ in DAMAGE:
        path = tmp_path / f"{damage.__name__}.pth"
        atomic_save({"model": SimpleModel().state_dict()}, path)
        damage(path)
        with pytest.raises(CorruptCheckpointError) as error:
            checkpointer.load(str(path))
        assert "weights_only =" not in str(error.value) and "weights_only=" not in str(error.value)


# ---- the resume fallback -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("damage", "reason"), DAMAGE, ids=IDS)
def test_damaged_newest_checkpoint_falls_back_with_a_warning_naming_both(
    trained: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Callable, reason: str
) -> None:
    out = _copy(trained, tmp_path)
    final, previous = out / "model_final.pth", out / "model_0000009.pth"
    damage(final)
    resumed, checkpointer = _trainer(out, 10)
    with caplog.at_level(logging.WARNING):
        assert checkpointer.resume_or_load("", resume=True) == {"iteration": 9}
    assert resumed.iter == 9
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"Cannot resume from {final}: Checkpoint {final} is truncated or corrupt: {reason}",
        f"Resuming from {previous} instead of {final} (named by {out / 'last_checkpoint'}, unreadable): the newest "
        "readable checkpoint in the directory",
    ]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (random.Random(1).randbytes(300), "it is not text (damaged)"),
        (b"", "it does not hold a file name (empty or damaged)"),
        (b"model_final.pth\nmodel_0000009.pth", "it does not hold a file name (empty or damaged)"),
    ],
    ids=["random-bytes", "empty", "two-lines"],
)
def test_unreadable_last_checkpoint_falls_back_to_the_newest_file(
    trained: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, problem: str
) -> None:
    out = _copy(trained, tmp_path)
    (out / "last_checkpoint").write_bytes(content)
    resumed, checkpointer = _trainer(out, 12)
    assert checkpointer.get_checkpoint_file() == ""
    with caplog.at_level(logging.WARNING):
        assert checkpointer.resume_or_load("", resume=True) == {"iteration": 11}
    assert resumed.iter == 11
    pointer = out / "last_checkpoint"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"Cannot use {pointer}: {problem}",
        f"Resuming from {out / 'model_final.pth'} instead of {pointer} ({problem}): the newest readable checkpoint "
        "in the directory",
    ]


def test_nothing_readable_is_one_line_listing_every_file(trained: Path, tmp_path: Path) -> None:
    out = _copy(trained, tmp_path)
    (out / "last_checkpoint").write_bytes(b"\xff\xfe")
    for i, (name, damage) in enumerate(
        [("model_0000004", empty), ("model_0000009", truncate), ("model_final", flip_bytes)]
    ):
        damage(out / f"{name}.pth")
        os.utime(out / f"{name}.pth", (1000 + i, 1000 + i))
    _, checkpointer = _trainer(out)
    with pytest.raises(CorruptCheckpointError) as error:
        checkpointer.resume_or_load("", resume=True)
    message = str(error.value)
    assert "\n" not in message
    assert message == (
        f"No checkpoint in '{out}' can be read: last_checkpoint (it is not text (damaged)); model_final.pth (its "
        "content does not match the CRC-32 checksum saved with it (the file changed after it was written: damaged "
        "on disk or in transfer)); model_0000009.pth (the zip archive is incomplete (File is not a zip file): the "
        "write was cut short or the file damaged); model_0000004.pth (the file is empty (0 bytes)). Delete or "
        "replace the damaged files, or train into another OUTPUT_DIR"
    )
    assert "weights_only" not in message.replace(str(tmp_path), "")


@pytest.mark.requires_detectron2
@pytest.mark.skipif(not detectron2_available(), reason=DETECTRON2_MISSING_REASON)
def test_detectron2_loads_a_sealed_checkpoint(trained: Path, tmp_path: Path) -> None:
    from detectron2.checkpoint import DetectionCheckpointer as Detectron2Checkpointer

    out = _copy(trained, tmp_path)
    assert zipfile.ZipFile(out / "model_final.pth").comment.startswith(b"d2lightning-crc32:")
    model = SimpleModel()
    extra = Detectron2Checkpointer(model, str(out)).resume_or_load("", resume=True)
    assert extra["iteration"] == 11
    expected = torch.load(out / "model_final.pth", weights_only=False)["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key

"""Checksums of checkpoint files: damage is found before a file is loaded (no detectron2 counterpart).

``torch.save`` writes a zip archive. While :func:`~d2lightning.checkpoint.atomic.atomic_save` streams it to
disk, a :class:`SealingWriter` computes the CRC-32 of everything torch writes and stores it in the archive's
comment field (the zip format's own place for free text, at the very end of the file): ``d2lightning-crc32:``
and 8 hex digits. Zip readers ignore the comment, so ``torch.load`` — detectron2's, Lightning's, anyone's —
reads the file as before; no extra file is written and the checksum travels with the file.

CRC-32 is the checksum of the zip and gzip formats, made to catch accidental damage: every burst of up to 32
flipped bits, and any other damage but for a 2**-32 chance. zlib computes it at several GB/s, about twice as fast
as SHA-256 even where the CPU accelerates the latter, so it adds little to a save. It is no protection against
deliberate tampering; ``torch.load(weights_only=True)`` is what guards against malicious files.

:func:`verify_checkpoint` runs before every load. It raises :class:`CorruptCheckpointError` for an empty file,
a zip archive cut short, bytes that are no PyTorch file at all, and a sealed file whose content no longer
matches its checksum (flipped bits on disk or in transfer, which ``torch.load`` itself would load silently).
A zip without our seal (written by detectron2, Lightning or an older d2lightning) gets the per-record CRC-32
check of the zip format instead. Files in torch's legacy (non-zip) format cannot be checked and are let
through.
"""

from __future__ import annotations

import os
import re
import struct
import zipfile
import zlib
from typing import IO

__all__ = ["CorruptCheckpointError", "SealingWriter", "verify_checkpoint"]

_MAGIC = b"d2lightning-crc32:"
_DIGITS = 8
_SEAL_SIZE = len(_MAGIC) + _DIGITS  # the comment: magic + hex checksum
_END_RECORD = b"PK\x05\x06"  # zip "end of central directory" signature
_END_SIZE = 22  # its size without comment; the last 2 bytes are the comment length
_ZIP_START = b"PK\x03\x04"
_LEGACY_START = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."  # torch's legacy format: its pickled magic number
_HEX = re.compile(rb"[0-9a-f]{%d}" % _DIGITS)
_CHUNK = 1 << 20


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read: truncated, damaged, or not a checkpoint at all."""


class SealingWriter:
    """A binary file for ``torch.save`` that adds a CRC-32 of the archive to its zip comment.

    Everything written goes to ``f`` unchanged; :meth:`seal` then rewrites the zip end record's comment length
    and appends the comment. The checksum covers every byte torch wrote except that 2-byte length field.

    Args:
        f: a binary file open for writing and seekable, positioned where the archive starts.
    """

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._crc = 0
        self._tail = b""  # the last bytes seen, not hashed yet: they may be the end record

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        if len(view) >= _END_SIZE:
            self._crc = zlib.crc32(view[:-_END_SIZE], zlib.crc32(self._tail, self._crc))
            self._tail = bytes(view[-_END_SIZE:])
        else:
            joined = self._tail + bytes(view)
            self._crc = zlib.crc32(joined[:-_END_SIZE], self._crc)
            self._tail = joined[-_END_SIZE:]
        return self._f.write(view)

    def flush(self) -> None:
        self._f.flush()

    def seal(self) -> None:
        """Write the comment after the archive torch has finished writing.

        Raises:
            RuntimeError: when what was written does not end with a comment-less zip end record (a torch
                version that writes another layout): the file is then left as torch wrote it.
        """
        tail = self._tail
        if len(tail) != _END_SIZE or not tail.startswith(_END_RECORD) or tail[-2:] != b"\0\0":
            raise RuntimeError("torch.save did not end its archive with a plain zip end record; cannot add a checksum")
        comment = _MAGIC + _hex(zlib.crc32(tail[:-2], self._crc))
        self._f.seek(-2, os.SEEK_CUR)
        self._f.write(struct.pack("<H", len(comment)) + comment)


def verify_checkpoint(path: str) -> bool:
    """Check that ``path`` is a complete, undamaged PyTorch file; return whether it carried a checksum.

    Reads the whole file once (its CRC-32, or the per-record CRC-32s of an unsealed zip archive).

    Raises:
        CorruptCheckpointError: naming ``path`` and what is wrong with it.
        OSError: when the file cannot be opened.
    """
    size = os.path.getsize(path)
    if size == 0:
        raise _corrupt(path, "the file is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_START))
        expected = _read_seal(f, size)
        if expected is not None:
            if _crc_of_prefix(f, size - _SEAL_SIZE - 2) != expected:
                raise _corrupt(
                    path,
                    "its content does not match the CRC-32 checksum saved with it (the file changed after it "
                    "was written: damaged on disk or in transfer)",
                )
            return True
    if head.startswith(_ZIP_START):
        _check_zip(path)
        return False
    if head.startswith(_LEGACY_START):
        return False  # torch's legacy format carries no checksum
    raise _corrupt(path, "it is not a PyTorch file (neither a zip archive nor torch's legacy format)")


def _corrupt(path: str, reason: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"Checkpoint {path} is truncated or corrupt: {reason}")


def _read_seal(f: IO[bytes], size: int) -> str | None:
    """The hex checksum of our comment, or None when the file does not end with one."""
    if size < _END_SIZE + _SEAL_SIZE:
        return None
    f.seek(size - _END_SIZE - _SEAL_SIZE)
    end = f.read(_END_SIZE + _SEAL_SIZE)
    record, comment = end[:_END_SIZE], end[_END_SIZE:]
    if not record.startswith(_END_RECORD) or struct.unpack("<H", record[-2:])[0] != _SEAL_SIZE:
        return None
    if not comment.startswith(_MAGIC) or not _HEX.fullmatch(comment[len(_MAGIC) :]):
        return None
    return comment[len(_MAGIC) :].decode("ascii")


def _crc_of_prefix(f: IO[bytes], length: int) -> str:
    crc = 0
    f.seek(0)
    left = length
    while left > 0:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            break
        crc = zlib.crc32(chunk, crc)
        left -= len(chunk)
    return _hex(crc).decode("ascii")


def _hex(crc: int) -> bytes:
    return b"%08x" % crc


def _check_zip(path: str) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile as e:
        raise _corrupt(
            path, f"the zip archive is incomplete ({e}): the write was cut short or the file damaged"
        ) from None
    except (OSError, EOFError, ValueError, NotImplementedError) as e:
        raise _corrupt(path, f"the zip archive cannot be read ({type(e).__name__}: {e})") from None
    if bad is not None:
        raise _corrupt(path, f"the CRC-32 of its record {bad!r} does not match (damaged on disk or in transfer)")

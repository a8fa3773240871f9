"""Restoring a disk image to a file or block device, sparsely and verified.

Order of work: only the data extents of the image's map are read (holes cost nothing: the
map says where they are), in large positional reads that the image reader turns into parallel
chunk fetches with read-ahead; every chunk is verified against its content hash, and damage
stops the restore with the damaged chunk named (a restore never writes wrong bytes).

Targets:

* a regular file is built as ``<target>.vmaccel-partial`` in the same directory (holes left
  as holes, so the file is sparse), fsynced, then renamed over ``<target>``: the target name
  only ever holds a complete, durable image. An existing file is replaced only with
  ``overwrite``. The file is created mode 0600: a disk image holds the whole guest.
* a block device must be at least as large as the image; holes are zeroed on it (it may hold
  old data) with ``BLKZEROOUT`` where the device supports it, else by writing zeros.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fusemount.errors import RestoreError
from fusemount.source import ImageStream

logger = logging.getLogger(__name__)

IO_BYTES = 8 * 1024 * 1024
PARTIAL_SUFFIX = ".vmaccel-partial"
_BLKZEROOUT = 0x127F  # _IO(0x12, 127): zero a byte range of a block device

Progress = Callable[[int], None]


@dataclass(frozen=True)
class DiskRestoreReport:
    """What a disk restore wrote. Sizes in bytes, ``seconds`` wall-clock."""

    source: str
    target: str
    device: bool
    size: int
    data_bytes: int
    hole_bytes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_per_second": self.rate}

    @property
    def rate(self) -> float:
        return self.size / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> list[str]:
        mib = 1024 * 1024
        kind = "device" if self.device else "sparse file"
        return [
            f"restored {self.source} to {kind} {self.target}",
            f"{self.size / mib:.1f} MiB image: {self.data_bytes / mib:.1f} MiB data, "
            f"{self.hole_bytes / mib:.1f} MiB holes, in {self.seconds:.1f} s "
            f"({self.rate / mib:.0f} MiB/s)",
        ]


def restore_disk(
    stream: ImageStream,
    target: Path,
    source: str,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> DiskRestoreReport:
    """Write every byte of ``stream`` to ``target`` (see the module docstring).

    ``source`` names the image in the report; ``progress`` is called with the number of image
    bytes done so far (data and holes). Raises :class:`RestoreError` for an unusable target
    and the reader's ``DamageError`` for damaged data (a partial file is removed).
    """
    start = time.monotonic()
    if _is_block_device(target):
        data, holes = _to_device(stream, target, progress)
        device = True
    else:
        data, holes = _to_file(stream, target, overwrite, progress)
        device = False
    return DiskRestoreReport(
        source, str(target), device, stream.size, data, holes, time.monotonic() - start
    )


def _is_block_device(path: Path) -> bool:
    try:
        return stat.S_ISBLK(path.stat().st_mode)
    except FileNotFoundError:
        return False


def _to_file(
    stream: ImageStream, target: Path, overwrite: bool, progress: Progress | None
) -> tuple[int, int]:
    if target.exists() or target.is_symlink():
        if not target.is_file() or target.is_symlink():
            raise RestoreError(f"{target} exists and is not a regular file or block device")
        if not overwrite:
            raise RestoreError(f"{target} exists; pass --force to replace it")
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    partial.unlink(missing_ok=True)  # left by an interrupted restore: never a complete image
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, stream.size)
        data, holes = _copy(stream, fd, progress, zero_holes=None)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        partial.unlink(missing_ok=True)
        raise
    os.close(fd)
    partial.replace(target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return data, holes


def _to_device(stream: ImageStream, target: Path, progress: Progress | None) -> tuple[int, int]:
    fd = os.open(target, os.O_WRONLY | os.O_EXCL)  # EXCL on a device: fail if it is mounted
    try:
        capacity = os.lseek(fd, 0, os.SEEK_END)
        if capacity < stream.size:
            raise RestoreError(
                f"{target} holds {capacity} bytes, less than the image's {stream.size}"
            )
        data, holes = _copy(stream, fd, progress, zero_holes=_zero_device)
        os.fsync(fd)
    finally:
        os.close(fd)
    return data, holes


def _copy(
    stream: ImageStream,
    fd: int,
    progress: Progress | None,
    zero_holes: Callable[[int, int, int], None] | None,
) -> tuple[int, int]:
    """Copy data extents to ``fd`` at their offsets; holes are skipped or ``zero_holes``d."""
    buf = memoryview(bytearray(IO_BYTES))
    data = holes = done = 0
    for offset, length, is_data in stream.extents():
        if not is_data:
            if zero_holes is not None:
                zero_holes(fd, offset, length)
            holes += length
            done += length
            if progress:
                progress(done)
            continue
        for piece_off, piece_len in _pieces(offset, length):
            n = stream.read_into(piece_off, buf[:piece_len])
            if n != piece_len:
                raise RestoreError(f"the image ended early at byte {piece_off + n}")
            _pwrite_all(fd, buf[:n], piece_off)
            data += n
            done += n
            if progress:
                progress(done)
    return data, holes


def _pieces(offset: int, length: int) -> Iterator[tuple[int, int]]:
    end = offset + length
    while offset < end:
        n = min(IO_BYTES, end - offset)
        yield offset, n
        offset += n


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _zero_device(fd: int, offset: int, length: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, _BLKZEROOUT, struct.pack("QQ", offset, length))
        return
    zeros = memoryview(bytes(min(IO_BYTES, length)))
    for piece_off, piece_len in _pieces(offset, length):
        _pwrite_all(fd, zeros[:piece_len], piece_off)


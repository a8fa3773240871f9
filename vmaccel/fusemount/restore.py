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
import errno
import fcntl
import logging
import mmap
import os
import queue
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vmaccel.fusemount.source import ImageStream
from vmaccel.vocabulary.errors import RestoreError
from vmaccel.vocabulary.units import format_bytes, format_duration

logger = logging.getLogger(__name__)

IO_BYTES = 8 * 1024 * 1024  # one positional read / write
BUFFERS = 3  # one filling, one being written, one spare
DIRECT_ALIGN = 4096  # O_DIRECT offsets and lengths: a multiple of the logical block size
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
        kind = "device" if self.device else "sparse file"
        return [
            f"restored {self.source} to {kind} {self.target}",
            f"{format_bytes(self.size)} image: {format_bytes(self.data_bytes)} data, "
            f"{format_bytes(self.hole_bytes)} holes, in {format_duration(self.seconds)} "
            f"({format_bytes(self.rate)}/s)",
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
        with _Sink(fd, partial) as sink:
            data, holes = _copy(stream, sink, progress, zero_holes=None)
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
        with _Sink(fd, target) as sink:  # its O_DIRECT descriptor: no O_EXCL, fd holds the claim
            data, holes = _copy(stream, sink, progress, zero_holes=_zero_device)
        os.fsync(fd)
    finally:
        os.close(fd)
    return data, holes


def _open_direct(path: Path) -> int | None:
    """A second, O_DIRECT descriptor for writing ``path``, or None where that is unsupported
    (tmpfs, some FUSE filesystems): writes then go through the page cache."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return None
    try:
        return os.open(path, os.O_WRONLY | direct)
    except OSError:
        return None


class _Sink:
    """Writes restored pieces on a thread of its own, so writing overlaps reading/decoding.

    Pieces are written with O_DIRECT (through a second descriptor of ``path``) where the
    filesystem or device takes it: a restore writes each byte once and never reads it back,
    and through the page cache the kernel's copy into freshly allocated cache pages cost about
    as much CPU as decoding (a third of the samples on a 2-vCPU KVM guest; it also evicts the
    repository's packs from the cache). Unaligned pieces (an image size that is not a
    multiple of ``DIRECT_ALIGN``) and filesystems that refuse O_DIRECT use the buffered
    descriptor. Buffers are page-aligned anonymous maps, reused: ``BUFFERS`` of ``IO_BYTES``.

    The caller fills a buffer from :meth:`buffer`, hands it over with :meth:`write`, and
    calls :meth:`drain` at the end; a write error is raised by the next call of either.
    ``written`` counts bytes whose write has completed (for progress reports).
    """

    def __init__(self, fd: int, path: Path) -> None:
        self._fd, self._path = fd, path
        self._fresh = [memoryview(mmap.mmap(-1, IO_BYTES)) for _ in range(BUFFERS)]
        self._done: queue.SimpleQueue[tuple[memoryview, int]] = queue.SimpleQueue()
        self._todo: queue.SimpleQueue[tuple[memoryview, int, int] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._outstanding = 0  # buffers handed to the thread and not yet taken back
        self.written = 0
        self._direct = _open_direct(path)
        self._thread = threading.Thread(target=self._run, name="vmaccel-restore-write")
        self._thread.start()

    @property
    def fd(self) -> int:
        """The buffered descriptor (for zeroing holes on a device)."""
        return self._fd

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def buffer(self) -> memoryview:
        """A free buffer of ``IO_BYTES``; waits for a write to complete if none is free."""
        if self._fresh:
            buf = self._fresh.pop()
        else:
            buf, done = self._done.get()
            self.written += done
            self._outstanding -= 1
        self._raise()
        return buf

    def write(self, buf: memoryview, offset: int, length: int) -> None:
        """Write ``buf[:length]`` at ``offset`` (on the writer thread); ``buf`` comes from
        :meth:`buffer` and must not be touched until :meth:`buffer` returns it again."""
        self._outstanding += 1
        self._todo.put((buf, offset, length))

    def drain(self) -> None:
        """Wait for every write handed over; raises the first write error."""
        while self._outstanding:
            _, done = self._done.get()
            self.written += done
            self._outstanding -= 1
        self._raise()

    def close(self) -> None:
        if self._thread.is_alive():
            self._todo.put(None)
            self._thread.join()
        if self._direct is not None:
            os.close(self._direct)
            self._direct = None

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            buf, offset, length = item
            try:
                if self._error is None:
                    self._pwrite(buf[:length], offset)
            except Exception as exc:  # noqa: BLE001 - raised again in the restoring thread
                if isinstance(exc, OSError) and exc.filename is None:
                    exc.filename = str(self._path)  # pwrite names none; the CLI's message does
                self._error = exc
            finally:  # whatever happens, the restoring thread gets the buffer back
                self._done.put((buf, length))

    def _pwrite(self, data: memoryview, offset: int) -> None:
        if (
            self._direct is not None
            and offset % DIRECT_ALIGN == 0
            and len(data) % DIRECT_ALIGN == 0
        ):
            try:
                n = os.pwrite(self._direct, data, offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                os.close(self._direct)  # accepted at open, refused at write: buffered from now
                self._direct = None
            else:
                data, offset = data[n:], offset + n  # a short direct write: rest buffered
        _pwrite_all(self._fd, data, offset)


def _copy(
    stream: ImageStream,
    sink: _Sink,
    progress: Progress | None,
    zero_holes: Callable[[int, int, int], None] | None,
) -> tuple[int, int]:
    """Copy data extents to the sink at their offsets; holes are skipped or ``zero_holes``d.

    Reads are large positional reads into the sink's reused buffers (the reader fetches and
    decodes their chunks on its own threads); the sink writes a buffer while the next fills.
    """
    data = holes = 0
    for offset, length, is_data in stream.extents():
        if not is_data:
            if zero_holes is not None:
                zero_holes(sink.fd, offset, length)
            holes += length
        else:
            for piece_off, piece_len in _pieces(offset, length):
                buf = sink.buffer()
                n = stream.read_into(piece_off, buf[:piece_len])
                if n != piece_len:
                    raise RestoreError(f"the image ended early at byte {piece_off + n}")
                sink.write(buf, piece_off, n)
                data += n
                if progress:
                    progress(holes + sink.written)
        if progress:
            progress(holes + sink.written)
    sink.drain()
    if progress:
        progress(holes + sink.written)
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

"""The ``file`` transport: a local image file or block device (hot-added disks, NFS-mounted
datastores). Holes come from ``SEEK_DATA``/``SEEK_HOLE`` where the filesystem supports them."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from vmaccel.guestfs.extent import Extent
from vmaccel.plugin.transport.source import LOCAL_READS, ReadShape
from vmaccel.vocabulary.errors import TransportError


class FileSource:
    """Reads with ``pread`` (thread safe). Block devices report their size via seek."""

    read_shape: ReadShape = LOCAL_READS

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            # O_NONBLOCK: opening a FIFO (or a tty) must not hang before it can be refused;
            # it changes nothing for reads of regular files and block devices.
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise TransportError(f"cannot open {path}: {exc.strerror}") from exc
        mode = os.fstat(self._fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            os.close(self._fd)
            raise TransportError(f"{path} is neither a regular file nor a block device")
        self._size = os.lseek(self._fd, 0, os.SEEK_END)

    @property
    def size(self) -> int:
        return self._size

    @property
    def name(self) -> str:
        return str(self.path)

    def read(self, offset: int, length: int) -> bytes:
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as exc:
            raise TransportError(f"reading {self.path} at {offset}: {exc.strerror}") from exc
        if len(data) != length:
            raise TransportError(
                f"{self.path} ended at {offset + len(data)} while reading {length} bytes at "
                f"{offset}; was it truncated during the backup?"
            )
        return data

    def read_into(self, offset: int, buffer: memoryview) -> None:
        """Fill ``buffer`` (writable, ``len(buffer)`` bytes) from byte ``offset``: ``read``
        into a caller's reusable buffer, so a full backup allocates no buffer per read."""
        done = 0
        while done < len(buffer):
            try:
                n = os.preadv(self._fd, [buffer[done:]], offset + done)
            except OSError as exc:
                raise TransportError(
                    f"reading {self.path} at {offset + done}: {exc.strerror}"
                ) from exc
            if n == 0:
                raise TransportError(
                    f"{self.path} ended at {offset + done} while reading {len(buffer)} bytes "
                    f"at {offset}; was it truncated during the backup?"
                )
            done += n

    def data_extents(self) -> list[Extent]:
        """Data extents by ``SEEK_DATA``/``SEEK_HOLE``; the whole file when unsupported."""
        extents, pos = [], 0
        try:
            while pos < self._size:
                start = os.lseek(self._fd, pos, os.SEEK_DATA)
                end = os.lseek(self._fd, start, os.SEEK_HOLE)
                extents.append(Extent(start, min(end, self._size) - start))
                pos = end
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                return extents
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return [Extent(0, self._size)] if self._size else []
            raise TransportError(f"mapping holes of {self.path}: {exc.strerror}") from exc
        return extents

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

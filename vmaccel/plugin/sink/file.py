"""The ``file`` sink: a disk's ``-flat.vmdk`` on a local or NFS-mounted datastore (or any
regular file). Zeroed ranges are punched out (``FALLOC_FL_PUNCH_HOLE``) where the filesystem
supports it, else written as zeros."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
from pathlib import Path

from vmaccel.vocabulary.errors import TransportError

_PUNCH = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
ZERO_PIECE = 8 * 1024 * 1024
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


class FileSink:
    """Writes with ``pwrite``. ``size`` bytes: a shorter regular file is extended (sparsely)
    to it; a block device must hold at least that much."""

    def __init__(self, path: Path, size: int) -> None:
        self.path, self._size = path, size
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise TransportError(f"cannot open {path} for writing: {exc.strerror}") from exc
        mode = os.fstat(self._fd).st_mode
        try:
            if stat.S_ISREG(mode):
                if os.fstat(self._fd).st_size < size:
                    os.ftruncate(self._fd, size)
            elif not stat.S_ISBLK(mode) or os.lseek(self._fd, 0, os.SEEK_END) < size:
                raise TransportError(f"{path} is no regular file or block device of {size} bytes")
        except OSError as exc:
            self.close()
            raise TransportError(f"cannot size {path}: {exc.strerror}") from exc
        except TransportError:
            self.close()
            raise
        self._punch = stat.S_ISREG(mode)

    @property
    def size(self) -> int:
        return self._size

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def ranged(self) -> bool:
        return True

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                done += os.pwrite(self._fd, view[done:], offset + done)
        except OSError as exc:
            raise TransportError(f"writing {self.path} at {offset + done}: {exc.strerror}") from exc

    def zero(self, offset: int, length: int) -> None:
        if length <= 0:
            return
        if self._punch and _libc.fallocate(self._fd, _PUNCH, offset, length) == 0:
            return
        err = ctypes.get_errno()
        if self._punch and err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise TransportError(
                f"punching {length} bytes at {offset} of {self.path}: {os.strerror(err)}"
            )
        zeros = bytes(min(length, ZERO_PIECE))
        for pos in range(offset, offset + length, ZERO_PIECE):
            self.write(pos, zeros[: min(ZERO_PIECE, offset + length - pos)])

    def flush(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise TransportError(f"flushing {self.path}: {exc.strerror}") from exc

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

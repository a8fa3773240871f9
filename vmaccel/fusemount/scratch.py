"""Scratch files of a writable mount: what a hypervisor creates next to the images it runs.

An ESXi host running a VM from an NFS datastore creates files in the disks' directory: lock
files (``.lck-<id>``, created exclusively, rewritten, removed at unlock), and logs or the VM's
configuration when its home is there too. In a ``--writable`` mount, the directory of a backup
(``/<vm>/<time>/``) therefore takes new files and directories besides the backup's own files;
they are plain files under ``root`` (``<root>/<vm>/<time>/<name>``), never in the repository.

Rules (must): a scratch name never shadows a file of the backup (creating one fails with
``EEXIST``; the backup's files cannot be removed or renamed: ``EPERM``); scratch paths exist
only below a backup directory; ``root`` is created on first use. Scratch files survive an
unmount (they live with the overlays and go when the overlay directory is deleted).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any


class ScratchFile:
    """An open scratch file: the stream interface of :class:`~.openfiles.OpenFiles`."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @property
    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def read_into(self, offset: int, buf: memoryview) -> int:
        return os.preadv(self.fd, [buf], offset)

    def write(self, offset: int, data: bytes | memoryview) -> int:
        return os.pwrite(self.fd, data, offset)

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class Scratch:
    """The scratch files of one mount, kept under ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def real(self, path: str) -> Path | None:
        """Where the scratch file for mount ``path`` lives; None above backup directories."""
        parts = [p for p in path.split("/") if p]
        if len(parts) < 3 or any(p in (".", "..") for p in parts):
            return None
        return self.root.joinpath(*parts)

    def _need(self, path: str) -> Path:
        real = self.real(path)
        if real is None:
            raise OSError(errno.EROFS, "only backup directories of a writable mount take files")
        return real

    def stat(self, path: str) -> dict[str, Any]:
        st = os.lstat(self._need(path))
        return {key: getattr(st, key) for key in (
            "st_mode", "st_size", "st_nlink", "st_uid", "st_gid", "st_blocks")} | {
            "st_mtime": st.st_mtime_ns, "st_atime": st.st_atime_ns, "st_ctime": st.st_ctime_ns,
            "st_blksize": 1 << 20}

    def is_dir(self, path: str) -> bool:
        real = self.real(path)
        return real is not None and real.is_dir() and not real.is_symlink()

    def listdir(self, dir_path: str) -> list[str]:
        """Scratch names in the mount directory ``dir_path`` (a backup or scratch directory)."""
        real = self.root.joinpath(*[p for p in dir_path.split("/") if p])
        try:
            return sorted(p.name for p in real.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def open(self, path: str, flags: int, mode: int = 0o644) -> ScratchFile:
        real = self._need(path)
        if flags & os.O_CREAT:
            real.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(real, (flags & ~os.O_NOFOLLOW) | os.O_NOFOLLOW | os.O_CLOEXEC,
                     stat.S_IMODE(mode))
        return ScratchFile(fd)

    def unlink(self, path: str) -> None:
        self._need(path).unlink()

    def mkdir(self, path: str, mode: int) -> None:
        real = self._need(path)
        real.parent.mkdir(parents=True, exist_ok=True)
        real.mkdir(stat.S_IMODE(mode))

    def rmdir(self, path: str) -> None:
        self._need(path).rmdir()

    def rename(self, old: str, new: str) -> None:
        self._need(old).replace(self._need(new))

    def truncate(self, path: str, length: int) -> None:
        os.truncate(self._need(path), length)

    def chmod(self, path: str, mode: int) -> None:
        self._need(path).chmod(stat.S_IMODE(mode))

    def utimens(self, path: str, times: tuple[int, int] | None) -> None:
        if times is None:
            os.utime(self._need(path))
        else:
            os.utime(self._need(path), ns=times)

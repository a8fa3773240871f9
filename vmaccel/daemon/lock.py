"""One daemon per repository: an exclusive ``flock`` on ``<repository>/daemon.lock``.

The kernel drops the lock when the holder exits, even by kill -9, so a crashed daemon never
blocks the next one. The holder writes ``host:pid`` into the file so that a refused second
daemon can say who runs.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from vmaccel.vocabulary.errors import RepositoryLocked

LOCK_FILE = "daemon.lock"


class DaemonLock:
    """Held from :meth:`acquire` (or ``with``) until :meth:`release` or process exit."""

    def __init__(self, repo: Path, owner: str) -> None:
        self.path, self.owner = repo / LOCK_FILE, owner
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`RepositoryLocked` naming the running daemon."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RepositoryLocked(
                f"another vmaccel daemon ({holder}) already serves the repository "
                f"{self.path.parent}; stop it first (one daemon per repository)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.owner}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DaemonLock:
        self.acquire()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

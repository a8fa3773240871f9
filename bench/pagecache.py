"""The page cache, as the benches control it: warm a set of files, evict them, or drop it all.

A figure called "cold" must not be served from memory and one called "warm" must be: the
benches use these helpers rather than assuming either. Evicting one set of files
(``posix_fadvise(POSIX_FADV_DONTNEED)``) leaves the rest of a shared machine's cache alone;
dropping everything (``/proc/sys/vm/drop_caches``) needs root.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

MiB = 1 << 20


def files_under(top: Path) -> list[Path]:
    """Every regular file under ``top``, sorted."""
    return sorted(f for f in top.rglob("*") if f.is_file() and not f.is_symlink())


def warm(files: list[Path]) -> None:
    """Read every file once, so later reads find them in the page cache."""
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.read(8 * MiB):
                pass


def open_synced(files: list[Path]) -> list[int]:
    """Open the files read-only and flush their dirty pages, so :func:`evict` can drop them
    all; the caller closes the descriptors."""
    fds = [os.open(f, os.O_RDONLY) for f in files]
    for fd in fds:
        os.fdatasync(fd)
    return fds


def evict(fds: list[int]) -> None:
    """Drop the open files' pages from the page cache. Only clean pages go: callers evict
    files that nothing is writing, opened with :func:`open_synced`."""
    for fd in fds:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def drop_all() -> bool:
    """``sync`` and drop the whole page cache (and dentries, inodes); False when not root."""
    if os.geteuid() != 0:
        return False
    subprocess.run(["sync"], check=False)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    return True

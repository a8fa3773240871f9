"""The space reserve: ``reserve``, RESERVE_BYTES of space only gc may use.

On a full disk gc releases it (:func:`release_reserve`) to commit its first deletions
(SQLite needs room for its WAL); writers recreate it (:func:`ensure_reserve`) when there is
room. Several writers (backups under leases) may recreate it at once: each fills a temporary
file of its own, ``.reserve.<random>.tmp``, and links it into place without replacing, so
the reserve is always whole; a writer that loses the race removes its temporary file. Only
gc (under the maintenance lock) releases it and removes the temporary files killed writers
left (:func:`clear_reserve_temps`).
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
from pathlib import Path

from vmaccel.catalog.durable import fsync_dir

logger = logging.getLogger(__name__)

RESERVE_BYTES = 4 * 1024 * 1024
_SOFT_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EOPNOTSUPP, errno.EINVAL)


def ensure_reserve(path: Path, free_bytes: int) -> bool:
    """Create ``<path>/reserve`` when it is missing and ``free_bytes`` (what the caller may
    still use on that filesystem) holds it twice; returns whether it exists afterwards."""
    target = path / "reserve"
    if target.exists():
        return True
    if free_bytes < 2 * RESERVE_BYTES:
        return False
    tmp = path / f".reserve.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.posix_fallocate(fd, 0, RESERVE_BYTES)
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _SOFT_ERRORS:
            tmp.unlink()
            raise
        tmp.unlink()
        return False
    finally:
        os.close(fd)
    try:
        os.link(tmp, target)
    except FileExistsError:
        pass  # another writer made it first: theirs is as good
    finally:
        tmp.unlink()
    return True


def release_reserve(path: Path) -> int:
    """Delete ``<path>/reserve`` (gc only, under the maintenance lock); returns the bytes it
    held on disk."""
    target = path / "reserve"
    try:
        size = int(target.stat().st_blocks * 512)
    except FileNotFoundError:
        return 0
    target.unlink()
    fsync_dir(path)
    logger.info("released the %d-byte space reserve of %s", size, path)
    return size


def clear_reserve_temps(path: Path, older_than: float) -> int:
    """Delete the temporary reserve files (``.reserve.*.tmp``) under ``path`` last changed
    before ``older_than`` (UNIX seconds): what writers killed while creating the reserve
    left. Returns how many went."""
    gone = 0
    for tmp in path.glob(".reserve.*tmp"):
        try:
            if tmp.stat().st_mtime < older_than:
                tmp.unlink()
                gone += 1
        except FileNotFoundError:
            continue
    return gone

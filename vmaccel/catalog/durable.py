"""Durable, private file operations.

What is on disk when these calls return survives a power loss. Every file of a repository is
created with mode 0600 and every directory with 0700, set explicitly after creation: the
umask (0o000 as well as 0o077) neither widens nor narrows them. SQLite gives an index's
``-wal`` and ``-shm`` files the mode of the database file, so the index file is created here
first (:func:`create_private_file`) and SQLite only opens it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def create_private_file(path: Path) -> int:
    """Create ``path``, which must not exist (``FileExistsError``), with mode exactly 0600;
    return a descriptor open for writing (the caller closes it). Symlinks are not followed."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_private_dir(path: Path) -> None:
    """Create the directory ``path`` with mode exactly 0700 (its parent must exist). An
    existing directory is left as it is."""
    try:
        path.mkdir(PRIVATE_DIR)
    except FileExistsError:
        return
    path.chmod(PRIVATE_DIR)


def write_file_durably(
    path: Path, data: bytes, mode: int = PRIVATE_FILE, replace: bool = True
) -> None:
    """Write ``data`` to ``path`` atomically: temp file, fsync, rename, fsync the directory.

    The file gets exactly ``mode`` (a temp file left by a crash is removed, never reused with
    its old permissions, and the umask cannot widen or narrow it). ``replace=False`` never
    overwrites: an existing ``path`` raises ``FileExistsError`` (see :func:`publish`). A
    failed write removes its temp file; a crash may leave it (``.<name>.tmp``, never read).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        publish(tmp, path, replace)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# A filesystem without hard links (FAT, exFAT) refuses link(2) with one of these.
_NO_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS)


def publish(tmp: Path, final: Path, replace: bool = False) -> None:
    """Give the durable file ``tmp`` the name ``final`` without copying it (same
    filesystem), then fsync ``final``'s directory: durable and visible when this returns.

    ``replace=True`` renames over an existing ``final`` (atomic: old or new, never neither).
    ``replace=False`` never overwrites: it links ``final`` to ``tmp`` (``FileExistsError``
    when ``final`` exists; ``tmp`` then stays) and removes ``tmp``. A crash between the two
    leaves ``tmp`` as a second name of the complete file. On a filesystem without hard links
    it checks, then renames: exclusive only among writers that hold the writer lock.
    """
    if replace:
        tmp.replace(final)
    else:
        try:
            os.link(tmp, final, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            if os.path.lexists(final):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(final)) from None
            tmp.rename(final)
        else:
            tmp.unlink()
    fsync_dir(final.parent)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames, deletions) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

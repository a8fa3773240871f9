"""Durable, private file operations.

What is on disk when these calls return survives a power loss. Every file of a repository is
created with mode 0600 and every directory with 0700, set explicitly after creation: the
umask (0o000 as well as 0o077) neither widens nor narrows them. SQLite gives an index's
``-wal`` and ``-shm`` files the mode of the database file, so the index file is created here
first (:func:`create_private_file`) and SQLite only opens it.
"""

from __future__ import annotations

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


def write_file_durably(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Write ``data`` to ``path`` atomically: temp file, fsync, rename, fsync the directory.

    The file gets exactly ``mode`` (a temp file left by a crash is removed, never reused with
    its old permissions, and the umask cannot widen or narrow it).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames, deletions) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""The one error tree of vmaccel.

Every error a user can cause or meet derives from :class:`VmaccelError`. Each class carries
the process exit code the CLI uses and an ``errno`` the FUSE layer returns; the message says
what went wrong and, where there is one, what to do about it. Builtin bases are added where
they fit, so ``except FileNotFoundError`` keeps working for callers that know nothing of us.
"""

from __future__ import annotations

import errno as _errno
import os


class VmaccelError(Exception):
    """Root of all vmaccel errors. ``exit_code`` is for the CLI, ``errno`` for FUSE."""

    exit_code: int = 1
    errno: int = _errno.EIO


class UsageError(VmaccelError, ValueError):
    """The caller asked for something that cannot be done as asked (bad option, bad value)."""

    exit_code = 2
    errno = _errno.EINVAL


class RepositoryError(VmaccelError):
    """Base for problems with a repository as a whole."""

    exit_code = 3


class RepositoryNotFound(RepositoryError, FileNotFoundError):
    errno = _errno.ENOENT


class RepositoryExists(RepositoryError, FileExistsError):
    errno = _errno.EEXIST


class UnsupportedFormat(RepositoryError):
    """The repository was written by a newer (or unknown) format version."""


class RepositoryLocked(RepositoryError):
    """Another process holds the repository's writer lock."""

    exit_code = 4
    errno = _errno.EAGAIN


class PassphraseError(RepositoryError, PermissionError):
    """The passphrase is missing or does not open the repository key."""

    exit_code = 5
    errno = _errno.EACCES


class DamageError(RepositoryError, OSError):
    """Stored data is missing or does not match its checksum. Never returned as data."""

    exit_code = 6
    errno = _errno.EIO


class ChunkCorrupt(DamageError):
    """A chunk's bytes fail their checksum, decryption or content hash."""


class ChunkMissing(DamageError):
    """The index names a chunk whose pack or bytes are gone."""


class IndexCorrupt(DamageError):
    """The SQLite catalog is unreadable or inconsistent; `repo rebuild-index` may repair it."""


class NotFound(VmaccelError, LookupError):
    """A named object (backup, image, VM, disk) does not exist."""

    exit_code = 7
    errno = _errno.ENOENT


class BackupNotFound(NotFound):
    pass


class ImageNotFound(NotFound):
    pass


class LocalIOError(VmaccelError, OSError):
    """An operating-system call failed in a way no layer below foresaw: a missing directory,
    a regular file where a directory belongs, no permission, an I/O error. The message names
    the path (or, without one, the operation) and the cause; the repository stays consistent
    because every write is ordered (see the write order in ``docs/format.md``)."""

    exit_code = 14
    errno = _errno.EIO

    @classmethod
    def from_os_error(cls, exc: OSError, operation: str) -> LocalIOError:
        """The error for ``exc``: :class:`NoSpaceLeft` for a full filesystem or quota.

        ``operation`` (e.g. "during `vmaccel backup`") is named when ``exc`` has no filename.
        """
        cause = (exc.strerror or str(exc) or type(exc).__name__).strip()
        cause = cause[:1].lower() + cause[1:]
        full = exc.errno in (_errno.ENOSPC, _errno.EDQUOT)
        if exc.filename is not None:
            where = _path_text(exc.filename)
            if exc.filename2 is not None:
                where += f" -> {_path_text(exc.filename2)}"
            message = f"{cause} writing {where}" if full else f"{cause}: {where}"
        else:
            message = f"{cause} {operation}"
        if full:
            err: LocalIOError = NoSpaceLeft(f"{message}; free space there and run it again")
        else:
            err = cls(message)
        err.errno = exc.errno or _errno.EIO
        return err


def _path_text(name: object) -> str:
    """An OSError's ``filename`` as text: usually a path, sometimes a descriptor number."""
    if isinstance(name, str | bytes | os.PathLike):
        return os.fsdecode(name)
    return f"file descriptor {name}" if isinstance(name, int) else str(name)


class NoSpaceLeft(LocalIOError):
    """A filesystem (or a quota) is full. Packs a backup wrote so far are garbage for gc,
    never part of a backup; a restore removes its partial file. Free space and run it again."""

    exit_code = 15
    errno = _errno.ENOSPC


class IndexMissing(IndexCorrupt):
    """The catalog index is missing or empty (no schema). Only ``repo init`` creates an index;
    any other command refuses the repository until ``repo rebuild-index`` has recreated it
    from the packs and manifests (a fresh, empty index would hide every backup and reuse
    their ids). Exit code 6 like :class:`IndexCorrupt`: the repository is damaged."""

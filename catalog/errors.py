"""The one error tree of vmaccel.

Every error a user can cause or meet derives from :class:`VmaccelError`. Each class carries
the process exit code the CLI uses and an ``errno`` the FUSE layer returns; the message says
what went wrong and, where there is one, what to do about it. Builtin bases are added where
they fit, so ``except FileNotFoundError`` keeps working for callers that know nothing of us.
"""

from __future__ import annotations

import errno as _errno


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

"""The one error tree of vmaccel and the one table of its exit codes.

Every error a user can cause or meet derives from :class:`VmaccelError`. Each class carries
the process exit code the CLI returns (:data:`EXIT_CODES` says what each code means; the
README's list is tested against it), an ``errno`` the FUSE layer returns, and an HTTP status
for the REST API (:func:`http_status`). The message says what went wrong and, where there is
one, what to do about it; it never names a command-line flag (the CLI adds those). Builtin
bases are added where they fit, so ``except FileNotFoundError`` keeps working for callers that
know nothing of us.
"""

from __future__ import annotations

import errno as _errno
import os
from types import MappingProxyType

EXIT_CODES = MappingProxyType(
    {
        0: "success",
        1: "VMs of a run failed for different causes, or an unexpected error",
        2: "usage error: a bad option, value or combination",
        3: "the repository is missing, already exists or has an unknown format",
        4: "the repository is locked by another process",
        5: "wrong or missing passphrase",
        6: "the repository is damaged (a chunk, pack or the index)",
        7: "not found: a backup, image, disk, file or VM",
        8: "a mount could not be set up or taken down",
        9: "a restore target cannot be written as asked",
        10: "reading the source disk failed (NBD, HTTP or file transport)",
        11: "vCenter is unreachable or refused an operation",
        12: "vCenter refused the credentials or ended the session",
        13: "the server certificate does not match the pinned thumbprint",
        14: "an operating-system call failed (path, permission, I/O error)",
        15: "a filesystem or quota is full",
        16: "a restore point did not boot (verify --boot): no bootable disk, panic, timeout",
        17: "a boot test could not run (qemu or OVMF missing, qemu failed)",
        130: "interrupted (Ctrl-C, SIGTERM or SIGHUP): snapshot removed, nothing partial recorded",
    }
)
"""Process exit codes of the ``vmaccel`` command: code -> what it means."""


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


class TransportError(VmaccelError, OSError):
    """Reading disk bytes failed (NBD server, datastore HTTP, local file)."""

    exit_code = 10
    errno = _errno.EIO


class SourceChanged(TransportError):
    """The disk changed size or identity while it was being read."""


class VCenterError(VmaccelError):
    """Base for problems talking to vCenter."""

    exit_code = 11


class ConnectionFailed(VCenterError, ConnectionError):
    """vCenter is unreachable (DNS, refused, timeout)."""

    errno = _errno.ECONNREFUSED


class LoginFailed(VCenterError, PermissionError):
    """vCenter refused the credentials."""

    exit_code = 12
    errno = _errno.EACCES


class SessionLost(VCenterError, PermissionError):
    """vCenter ended the session and refused the call again after a new login."""

    exit_code = 12
    errno = _errno.EACCES


class CertificateMismatch(VCenterError):
    """The server's certificate does not match the pinned thumbprint."""

    exit_code = 13


class SnapshotFailed(VCenterError):
    """Creating or removing the backup snapshot failed."""


class ChangeTrackingError(VCenterError):
    """QueryChangedDiskAreas faulted or returned inconsistent areas; the disk is read whole."""


class VmNotFound(NotFound, VCenterError):
    """No VM of that name (or id) in the vCenter asked."""


class MountError(VmaccelError):
    """A mount could not be set up, run or taken down."""

    exit_code = 8


class FuseUnavailable(MountError):
    """No usable FUSE binding: install libfuse (apt install fuse3) and mfusepy (or fusepy)."""


class MountpointError(MountError, OSError):
    """The mount point is missing, not a directory, busy, or not mounted by vmaccel."""

    errno = _errno.EINVAL


class RestoreError(VmaccelError):
    """A restore target cannot be written as asked (exists, wrong type, too small)."""

    exit_code = 9
    errno = _errno.EINVAL


class Interrupted(VmaccelError):
    """Stopped by the operator (Ctrl-C, SIGTERM, SIGHUP) or a cancelled job. What was in
    flight was rolled back: no partial backup is recorded and its snapshot is removed."""

    exit_code = 130
    errno = _errno.EINTR


class BootFailed(VmaccelError):
    """A restore point did not boot under test: no bootable disk, a kernel panic, the guest
    stopping, or no marker before the timeout (the message says which)."""

    exit_code = 16


class BootTestError(VmaccelError):
    """A boot test could not run: qemu or the firmware is missing, or qemu failed."""

    exit_code = 17


class GuestDataError(VmaccelError):
    """A guest's on-disk structure (partition table, LVM, filesystem) is damaged, inconsistent
    or unsupported (exit code 1 when nothing above handles it, ``EIO`` in a mount). Root of
    :class:`vmaccel.guestfs.errors.GuestFsError`."""


_HTTP_STATUS: tuple[tuple[type[VmaccelError], int], ...] = (
    (UsageError, 400),
    (PassphraseError, 401),
    (LoginFailed, 502),
    (SessionLost, 502),
    (NotFound, 404),
    (RepositoryExists, 409),
    (RepositoryLocked, 409),
    (RestoreError, 409),
    (NoSpaceLeft, 507),
    (DamageError, 500),
    (VCenterError, 502),
    (TransportError, 502),
)


def http_status(exc: VmaccelError) -> int:
    """The HTTP status the REST API answers ``exc`` with (500 for anything not listed)."""
    for cls, status in _HTTP_STATUS:
        if isinstance(exc, cls):
            return status
    return 500

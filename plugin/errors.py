"""Errors of the vCenter-facing side, in the one tree rooted at ``VmaccelError``."""

from __future__ import annotations

import errno as _errno

from catalog.errors import VmaccelError


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


class VmNotFound(VCenterError, LookupError):
    exit_code = 7

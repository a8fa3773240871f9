"""fusemount's errors and the one mapping from exceptions to errno values.

FUSE speaks errno, so every failure inside an operation ends as a negative errno returned to
the kernel. :func:`to_errno` is the only place that decides which: vmaccel errors carry their
own ``errno`` class attribute (:class:`~catalog.errors.DamageError` -> ``EIO``, a missing
backup -> ``ENOENT``), other ``OSError``s keep theirs.
"""

from __future__ import annotations

import errno as _errno

from catalog.errors import VmaccelError


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


def to_errno(exc: BaseException) -> int:
    """The positive errno that a FUSE operation failing with ``exc`` returns.

    vmaccel errors first (their class decides, e.g. damage is ``EIO``), then OS errors with
    their own errno, then ``EIO`` for anything else handed in. Callers catch only
    ``(VmaccelError, OSError)``; programming errors are not mapped and propagate.
    """
    if isinstance(exc, VmaccelError):
        return int(exc.errno)
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:
        return exc.errno
    return _errno.EIO  # e.g. guestfs.errors.GuestFsError: damaged guest metadata

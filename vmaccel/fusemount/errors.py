"""The one mapping from exceptions to errno values.

FUSE speaks errno, so every failure inside an operation ends as a negative errno returned to
the kernel. :func:`to_errno` is the only place that decides which: vmaccel errors carry their
own ``errno`` class attribute (:class:`~vmaccel.vocabulary.errors.DamageError` -> ``EIO``, a missing
backup -> ``ENOENT``), other ``OSError``s keep theirs.
"""

from __future__ import annotations

import errno as _errno

from vmaccel.vocabulary.errors import VmaccelError


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

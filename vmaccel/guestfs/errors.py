"""The one exception guestfs raises for bad or unsupported on-disk structures.

It is the guest-data branch (:class:`~vmaccel.vocabulary.errors.GuestDataError`) of the one error
tree: exit code 1 when nothing above handles it, ``EIO`` in a mount.
"""

from __future__ import annotations

from vmaccel.vocabulary.errors import GuestDataError


class GuestFsError(GuestDataError):
    """An on-disk structure is damaged, inconsistent or unsupported.

    The message names the structure and what was wrong with it, e.g.
    ``"GPT header: CRC32 mismatch (stored 0x1234abcd, computed 0x0badf00d)"``.
    The allocation map never lets this escape for a single filesystem (that volume is then
    taken whole, with the message as the reason); it escapes only when the disk layout itself
    (partition table, LVM metadata) cannot be trusted.
    """


class LocalDamage(GuestFsError):
    """Damage confined to one file's own metadata (e.g. one torn NTFS file record).

    Free-block skipping cannot use such a volume (the damaged file's extents are unknown, so
    the volume is read whole), but a file tree is still right about every other file and
    reports the damaged one as unreadable, so the mount keeps the volume browsable. Raised only
    after every other check of the volume has passed.
    """

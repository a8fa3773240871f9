"""Is a guest filesystem clean? Asked of each filesystem's own checker, read-only.

"Clean" is what invariant 5 of DESIGN.md needs: no journal/log awaiting replay and no dirty flag,
so a reader may trust the allocation bitmaps.
"""

from __future__ import annotations

import re
from pathlib import Path

from testbed.guestimages.commands import run
from testbed.guestimages.model import GuestVolume
from testbed.guestimages.mounts import volume_device


class NotClean(AssertionError):
    """The checker found the filesystem dirty or damaged; the message carries its output."""


def check_clean(image: Path, volume: GuestVolume) -> None:
    """Raise NotClean unless `volume` in `image` is consistent and cleanly unmounted."""
    with volume_device(image, volume, read_only=True) as dev:
        try:
            _CHECKS[volume.fstype](dev)
        except RuntimeError as exc:  # the checker's non-zero exit
            raise NotClean(f"{volume.name} ({volume.fstype}): {exc}") from exc


def _ext4(dev: str) -> None:
    run("e2fsck", "-f", "-n", dev)
    header = run("dumpe2fs", "-h", dev)
    if "needs_recovery" in header or not re.search(r"^Filesystem state:\s+clean$", header, re.M):
        raise RuntimeError(f"ext4 not clean: {header}")


def _xfs(dev: str) -> None:
    run("xfs_repair", "-n", dev)  # exits non-zero when the log is dirty


def _ntfs(dev: str) -> None:
    run("ntfsfix", "-n", dev)
    flags = re.search(r"Volume Flags: 0x([0-9a-fA-F]+)", run("ntfsinfo", "-m", dev))
    if flags is None or int(flags.group(1), 16) & 0x0001:  # VOLUME_IS_DIRTY
        raise RuntimeError(f"ntfs volume flags {flags.group(0) if flags else 'unknown'}")


def _vfat(dev: str) -> None:
    out = run("fsck.fat", "-n", dev)
    if "dirty" in out.lower():
        raise RuntimeError(out)


_CHECKS = {"ext4": _ext4, "xfs": _xfs, "ntfs": _ntfs, "vfat": _vfat}

"""Mounting clones of one guest volume at the same time, from several processes.

Every copy of a cached guest image carries the same filesystem UUIDs, and XFS refuses to mount
a second filesystem with a UUID already mounted ("duplicate UUID"), so two tests (or a test and
a helper process) that each mount their own copy would fail at random. `mounted` here passes
XFS `nouuid` and otherwise is mounts.mounted: the kernel for ext4/XFS, ntfs-3g, mtools for FAT.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from testbed.guestimages import mounts
from testbed.guestimages.commands import run
from testbed.guestimages.model import GuestVolume

# Read-only mounts never replay a journal/log, even on a dirty filesystem.
_XFS_OPTIONS = {True: "ro,norecovery,nouuid", False: "nouuid"}


@contextlib.contextmanager
def mounted(image: Path, volume: GuestVolume, read_only: bool = True) -> Iterator[Path]:
    """Mount `volume` of the raw disk `image` and yield the mount point; unmounted on exit
    (a writable mount leaves the filesystem clean)."""
    if volume.fstype != "xfs":
        with mounts.mounted(image, volume, read_only) as root:
            yield root
        return
    with (
        mounts.volume_device(image, volume, read_only) as dev,
        tempfile.TemporaryDirectory(prefix="vmaccel-mnt-") as mnt,
    ):
        run("mount", "-t", "xfs", "-o", _XFS_OPTIONS[read_only], dev, mnt)
        try:
            yield Path(mnt)
        finally:
            run("umount", mnt)

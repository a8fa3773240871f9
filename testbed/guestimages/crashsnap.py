"""Crash-consistent snapshots: a copy of a disk taken while a guest has a volume mounted and
writing, as a hypervisor snapshot of a VM that could not be quiesced sees it.

The copy holds whatever reached the disk: committed journal/log transactions not yet written
back to their home blocks (so allocation bitmaps lag the files), and nothing of what was still
in the guest's page cache. What such a disk means is decided the way the guest would: replay
the journal/log by mounting a scratch copy read-write, then read the tree (`replayed_manifest`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from testbed.guestimages.commands import run
from testbed.guestimages.fscheck import check_clean
from testbed.guestimages.kernelmount import mounted
from testbed.guestimages.model import FileExpect, GuestVolume
from testbed.guestimages.mounts import clone_image, volume_device
from testbed.guestimages.scan import scan_tree

_RW_MOUNT = {"ext4": "rw", "xfs": "nouuid"}  # nouuid: see kernelmount.py


def crash_snapshot(
    image: Path, volume: GuestVolume, dest: Path, activity: Callable[[Path], None]
) -> None:
    """Mount `volume` (ext4 or XFS, a partition) of `image` read-write, run `activity(root)`,
    copy the whole disk to `dest` while still mounted, then unmount. `image` ends up clean;
    `dest` is the crash-consistent snapshot."""
    assert len(volume.extents) == 1, "a partition: an LV's scratch copy is not the disk"
    with volume_device(image, volume, read_only=False) as dev:
        mnt = dest.with_name(dest.name + ".mnt")
        mnt.mkdir()
        run("mount", "-t", volume.fstype, "-o", _RW_MOUNT[volume.fstype], dev, str(mnt))
        try:
            activity(mnt)
            clone_image(image, dest)
        finally:
            run("umount", str(mnt))
            mnt.rmdir()


def replayed_manifest(disk: Path, volume: GuestVolume, scratch: Path) -> dict[str, FileExpect]:
    """The tree of `volume` on `disk` after the guest's own recovery: a scratch copy is mounted
    read-write (the kernel replays the journal/log), read, unmounted and then must be clean."""
    clone_image(disk, scratch)
    try:
        with mounted(scratch, volume, read_only=False) as root:
            tree = scan_tree(root, volume.fstype)
        check_clean(scratch, volume)
        return tree
    finally:
        os.unlink(scratch)

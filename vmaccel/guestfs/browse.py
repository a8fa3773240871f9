"""Open the file tree of every volume of a disk: `browse_disk` and `open_filesystem`.

Every volume of the layout is reported, browsable or not, under a stable, path-safe name: the
partition's ("p1", "p5"), "disk" for a bare filesystem, and for an LVM logical volume the
device-mapper name of VG/LV ("-" doubled inside each part, joined by "-": "vg-root",
"my--vg-lv--1"), which cannot collide and is what the guest sees in /dev/mapper. A volume that
cannot be browsed (swap, unknown content, a PV, an LV of an unsupported type, damaged
filesystem metadata) gets `filesystem=None` and a reason; only a damaged partition table
raises, since then no volume can be trusted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import BinaryIO

from vmaccel.guestfs.allocation import (
    MALFORMED_LAYOUT,
    check_filesystem,
    disk_size_of,
    logical_volumes,
    read_layout,
)
from vmaccel.guestfs.errors import GuestFsError, LocalDamage
from vmaccel.guestfs.filesystem import FileSystem
from vmaccel.guestfs.lvm import read_physical_volume
from vmaccel.guestfs.probe import EXT_FAMILY
from vmaccel.guestfs.volume import Volume, VolumeKind, VolumeView

logger = logging.getLogger(__name__)

# fstype -> (module, opener). Adapters (and dissect behind them) are imported on first use:
# a disk with one ext4 volume never pays for the NTFS, XFS and FAT parsers.
_OPENERS: dict[str, tuple[str, str]] = {
    "xfs": ("vmaccel.guestfs.fs_xfs", "open_xfs"),
    "ntfs": ("vmaccel.guestfs.fs_ntfs", "open_ntfs"),
    "vfat": ("vmaccel.guestfs.fs_fat", "open_fat"),
    **{name: ("vmaccel.guestfs.fs_ext", "open_ext") for name in EXT_FAMILY},
}
BROWSABLE = frozenset(_OPENERS)
"""The fstypes guestfs opens as file trees; a volume of one of them that fails to open is damaged
(or hostile), not merely of another kind."""
_UNSAFE = re.compile(r"[^A-Za-z0-9+_.-]")


@dataclass(frozen=True)
class BrowsedVolume:
    """One volume of a disk: its path-safe `name`, what it holds, and its file tree.

    `filesystem` is None exactly when `reason` says why it cannot be browsed. `label` is the
    filesystem's volume label, if any. The filesystem reads through the disk stream given to
    `browse_disk` (not thread-safe; see guestfs.filesystem).
    """

    name: str
    volume: Volume
    fstype: str | None
    label: str | None
    filesystem: FileSystem | None
    reason: str | None


def open_filesystem(view: VolumeView, fstype: str | None = None) -> FileSystem:
    """The file tree of the filesystem behind `view` (fstype defaults to the probed one).

    Raises `GuestFsError` if the fstype is not browsable or its metadata is unusable.
    """
    kind = fstype or view.volume.fstype
    where = _OPENERS.get(kind or "")
    if where is None:
        what = f"{kind} is not a filesystem we browse" if kind else "unrecognised content"
        raise GuestFsError(what)
    assert kind is not None  # noqa: S101 - narrows the type for mypy; where is None when kind is
    opener: Callable[[VolumeView, str], FileSystem] = getattr(import_module(where[0]), where[1])
    return opener(view, kind)


def volume_name(volume: Volume) -> str:
    """The stable, path-safe name of `volume` (see the module docstring)."""
    if volume.kind is VolumeKind.LOGICAL_VOLUME:
        vg, _, lv = volume.name.partition("/")
        name = "-".join(part.replace("-", "--") for part in (vg, lv) if part)
    else:
        name = volume.name
    safe = _UNSAFE.sub("_", name)
    return safe if safe.strip(".") else "_"


def browse_disk(disk: BinaryIO, disk_size: int | None = None) -> list[BrowsedVolume]:
    """Every volume of the disk behind the seekable `disk`, in disk order, LVs after their PV.

    Raises `GuestFsError` only when the partition table is present but damaged.
    """
    size = disk_size_of(disk) if disk_size is None else disk_size
    out: list[BrowsedVolume] = []
    for volume in read_layout(disk, size).volumes:
        if volume.fstype == "lvm2":
            out.extend(_browse_physical_volume(disk, volume))
        else:
            out.append(_browse(disk, volume))
    return out


def _browse(disk: BinaryIO, volume: Volume) -> BrowsedVolume:
    name = volume_name(volume)
    view = VolumeView(disk, volume)
    try:
        if volume.fstype in _OPENERS:
            _verify(view)
        fs = open_filesystem(view)
    except GuestFsError as exc:
        if volume.fstype in _OPENERS:
            logger.warning("%s (%s) cannot be browsed: %s", name, volume.fstype, exc)
        return BrowsedVolume(name, volume, volume.fstype, None, None, str(exc))
    return BrowsedVolume(name, volume, volume.fstype, fs.label, fs, None)


def _verify(view: VolumeView) -> None:
    """Refuse a volume whose metadata fails the checks free-block skipping relies on.

    The same evidence decides both: a tree parser handed damaged metadata would show
    plausible wrong files, so a volume that cannot be verified is shown as an error instead.
    A volume that is verified but not current (a pending journal replay) is still browsed:
    its backup was read whole, and its tree is the guest's as of the snapshot. Neither is
    one file's own damaged metadata (`LocalDamage`): the tree reports that file as unreadable.
    """
    try:
        check_filesystem(view)
    except LocalDamage as exc:
        logger.info("%s: %s (only that file is unreadable)", view.volume.name, exc)
    except MALFORMED_LAYOUT as exc:
        raise GuestFsError(f"metadata fails verification: {exc}") from exc


def _browse_physical_volume(disk: BinaryIO, volume: Volume) -> list[BrowsedVolume]:
    """The PV itself (never browsable) and then each of its LVs."""
    name = volume_name(volume)
    try:
        pv = read_physical_volume(VolumeView(disk, volume))
    except MALFORMED_LAYOUT as exc:
        reason = f"unreadable LVM physical volume: {exc}"
        return [BrowsedVolume(name, volume, "lvm2", None, None, reason)]
    note = "LVM physical volume; its logical volumes are listed separately"
    out = [BrowsedVolume(name, volume, "lvm2", None, None, note)]
    readable = {lv.name for lv in logical_volumes(disk, volume, pv)}
    for lv in pv.logical_volumes:
        if lv.name in readable:
            continue
        why = lv.unsupported or "it spans other physical volumes (disks)"
        skipped = Volume(lv.name, VolumeKind.LOGICAL_VOLUME, lv.size, ())
        out.append(BrowsedVolume(volume_name(skipped), skipped, None, None, None, why))
    out.extend(_browse(disk, lv_volume) for lv_volume in logical_volumes(disk, volume, pv))
    return out

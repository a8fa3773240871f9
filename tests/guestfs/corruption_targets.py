"""The filesystems of the corruption matrix: each a `Target`, its `Truth` and its mutation kinds.

Everything here is computed once per target from the pristine image (tools run on an
extracted copy in `work`), then shared by thousands of cases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.guestfs.corruption import Kind, Target, Truth
from tests.guestfs.corruption_ext4 import Ext4Corruptor
from tests.guestfs.corruption_facts import (
    Ext4Facts,
    FatFacts,
    NtfsFacts,
    XfsFacts,
    ext4_facts,
    extract,
    fat_facts,
    lvm_facts,
    ntfs_facts,
    xfs_facts,
)
from tests.guestfs.corruption_fat import FatCorruptor
from tests.guestfs.corruption_lvm import LvmCorruptor
from tests.guestfs.corruption_ntfs import NtfsCorruptor
from tests.guestfs.corruption_truth import (
    ext4_metadata,
    fat_metadata,
    locate_files,
    ntfs_metadata,
    truth_for,
    xfs_metadata,
)
from tests.guestfs.corruption_xfs import XfsCorruptor
from vmaccel.guestfs.allocation import build_allocation_map

TARGETS = ("ext4", "ext4-lvm", "ext3", "ntfs", "xfs", "fat32", "fat16", "fat12")
MBR_TYPES = {"ext4": 0x83, "ext3": 0x83, "xfs": 0x83, "ntfs": 0x07, "vfat": 0x0C, "lvm": 0x8E}


@dataclass(frozen=True)
class Prepared:
    """A target ready for cases; `facts` are the located structures (an `Ext4Facts`,
    `NtfsFacts`, `XfsFacts` or `FatFacts`)."""

    target: Target
    truth: Truth
    kinds: dict[str, Kind]
    facts: Ext4Facts | NtfsFacts | XfsFacts | FatFacts


Get = Callable[[str], "Prepared"]  # what the session fixtures return: name -> Prepared


def partition_target(name: str, fstype: str, image: Path, offset: int, size: int) -> Target:
    """A filesystem filling the partition at image byte `offset`, behind a synthetic MBR."""
    return Target(name, fstype, image, offset, size, MBR_TYPES[fstype], ((0, 0, size),))


def lv_target(name: str, image: Path, pv_name: str, lv_name: str) -> Target:
    """The ext4 LV `lv_name` inside PV partition `pv_name`, behind a synthetic MBR.

    Where the LV's segments lie comes from the product's LVM parser on the pristine image:
    the layout is not what the matrix tests (test_allocation_images proves it on this image)
    and the mutations here never touch it except as `LvmCorruptor` cases."""
    with open(image, "rb") as f:
        amap = build_allocation_map(f)
    pv = next(r.volume for r in amap.volumes if r.volume.name == pv_name)
    lv = next(r.volume for r in amap.volumes if r.volume.name.split("/")[-1] == lv_name)
    base = pv.segments[0].disk_offset
    segs = tuple((s.volume_offset, s.disk_offset - base, s.length) for s in lv.segments)
    return Target(name, "ext4", image, base, pv.size, MBR_TYPES["lvm"], segs, lv.name, "p1")


def prepare(target: Target, files: dict[str, bytes], work: Path) -> Prepared:
    """Locate the target's structures and truth; `work` holds the extracted copy briefly."""
    work.mkdir(parents=True, exist_ok=True)
    kinds: dict[str, Kind]
    facts: Ext4Facts | NtfsFacts | XfsFacts | FatFacts
    fs = work / f"{target.name}.fs"
    try:
        if target.fstype.startswith("ext"):
            facts = e = ext4_facts(extract(target, fs))
            data = locate_files(target, files)[0]
            metadata, kinds = ext4_metadata(target, e), Ext4Corruptor(target, e, data).kinds()
        elif target.fstype == "ntfs":
            facts = n = ntfs_facts(extract(target, fs), target.read_fs(0, 512))
            metadata, kinds = ntfs_metadata(target, n), NtfsCorruptor(target, n).kinds()
        elif target.fstype == "xfs":
            facts = x = xfs_facts(extract(target, fs))
            metadata, kinds = xfs_metadata(target, x), XfsCorruptor(target, x).kinds()
        else:
            facts = v = fat_facts(target.read_fs(0, 512))
            metadata, kinds = fat_metadata(target, v), FatCorruptor(target, v).kinds()
    finally:
        fs.unlink(missing_ok=True)
    lvm = None
    if target.pv:
        with open(target.image, "rb") as f:
            f.seek(target.base)
            lvm = lvm_facts(f.read(1 << 20))
        kinds.update(LvmCorruptor(target, lvm).kinds())
    return Prepared(target, truth_for(target, files, metadata, lvm), kinds, facts)

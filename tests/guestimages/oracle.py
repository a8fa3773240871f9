"""An oracle for restored disks that shares no code with vmaccel: the guest's own tools decide.

A restored disk is right when, read by the tools a guest would use, it is the source disk:
- the partition table reads the same (sfdisk), and so does every LVM logical volume's place on
  the disk (LVM's own pvs/lvs on the restored physical volume);
- each filesystem passes its own checker read-only (fscheck.py: e2fsck -fn, xfs_repair -n,
  ntfsfix -n, fsck.fat -n);
- each filesystem, mounted (kernel for ext4/XFS, ntfs-3g, mtools for FAT), holds the same tree:
  path -> kind, size, sha256, link target, mtime and (ext4/XFS) mode (scan.py);
- byte for byte, every 512-byte sector of the restored disk either equals the source's or reads
  as zeros, and zeros appear only inside a filesystem: skipping may drop what a filesystem calls
  free, never replace bytes or touch partition tables, LVM metadata or unformatted space.

None of it reads vmaccel's allocation maps or parsers; volume geometry comes from sfdisk and LVM.
Offsets and sizes are bytes from the start of the disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from testbed.guestimages.commands import run
from testbed.guestimages.fscheck import check_clean
from testbed.guestimages.kernelmount import mounted
from testbed.guestimages.layout import lv_extents
from testbed.guestimages.model import FileExpect, GuestImage, GuestVolume, VolumeExtent
from testbed.guestimages.mounts import data_ranges, loop_device
from testbed.guestimages.scan import diff_trees, scan_tree

SECTOR = 512
_PIECE = 1 << 20

Manifest = dict[str, FileExpect]


def partition_table(disk: Path) -> dict[str, Any]:
    """sfdisk's reading of the table (device names left out); raises if sfdisk --verify finds
    an error."""
    report = run("sfdisk", "--verify", str(disk))
    if "No errors detected" not in report and report.strip() != "":
        raise AssertionError(f"sfdisk --verify {disk}: {report}")
    table: dict[str, Any] = json.loads(run("sfdisk", "--json", str(disk)))["partitiontable"]
    table.pop("device", None)
    for part in table["partitions"]:
        part["node"] = part["node"].removeprefix(str(disk)).removeprefix("p")
    return table


def tool_volumes(disk: Path, image: GuestImage) -> tuple[GuestVolume, ...]:
    """The volumes of `image` (by name, type and partition number), placed where sfdisk and LVM
    find them on `disk`; their `files` are left empty."""
    table = partition_table(disk)
    sector = int(table["sectorsize"])
    parts = {
        int(p["node"]): (int(p["start"]) * sector, int(p["size"]) * sector)
        for p in table["partitions"]
    }
    out = []
    for vol in image.volumes:
        assert vol.partition is not None, vol.name
        offset, size = parts[vol.partition]
        extents: tuple[VolumeExtent, ...] = (VolumeExtent(0, offset, size),)
        if vol.lvm is not None:
            vg, lv = vol.lvm
            with loop_device(disk, offset, size, read_only=True) as dev:
                extents = lv_extents(dev, vg, offset)[lv]
            size = sum(e.length for e in extents)
        out.append(
            replace(vol, offset=extents[0].disk_offset, size=size, extents=extents, files={})
        )
    return tuple(out)


def tool_manifest(disk: Path, volume: GuestVolume) -> Manifest:
    """The tree of `volume` on `disk` as a read-only mount shows it (never vmaccel's reader)."""
    with mounted(disk, volume, read_only=True) as root:
        return scan_tree(root, volume.fstype)


@dataclass(frozen=True)
class Deviation:
    """How a restored disk differs from its source: only by `zeroed` ranges (offset, length),
    merged sectors, where the source holds non-zero bytes and the restore reads zeros."""

    zeroed: tuple[tuple[int, int], ...] = field(default=())

    def within(self, extents: Sequence[VolumeExtent]) -> int:
        """Zeroed bytes inside `extents` (disk ranges)."""
        return sum(
            max(0, min(a + n, e.disk_offset + e.length) - max(a, e.disk_offset))
            for a, n in self.zeroed
            for e in extents
        )

    @property
    def total(self) -> int:
        return sum(n for _, n in self.zeroed)


def deviation(source: Path, restored: Path) -> Deviation:
    """Compare two disks sector by sector; raise AssertionError at the first sector of
    `restored` that is neither the source's bytes nor zeros."""
    zeroed: list[tuple[int, int]] = []
    src, dst = os.open(source, os.O_RDONLY), os.open(restored, os.O_RDONLY)
    try:
        size = os.fstat(src).st_size
        if os.fstat(dst).st_size != size:
            raise AssertionError(f"{restored} is {os.fstat(dst).st_size} bytes, source {size}")
        for start, end in _union(data_ranges(src, 0, size), data_ranges(dst, 0, size)):
            for pos in range(start, end, _PIECE):
                n = min(_PIECE, end - pos)
                want, got = os.pread(src, n, pos), os.pread(dst, n, pos)
                if want != got:
                    zeroed += _zeroed_blocks(want, got, pos, restored)
    finally:
        os.close(src)
        os.close(dst)
    return Deviation(tuple(_merge(zeroed)))


def _zeroed_blocks(want: bytes, got: bytes, pos: int, restored: Path) -> list[tuple[int, int]]:
    out = []
    for i in range(0, len(want), SECTOR):
        a, b = want[i : i + SECTOR], got[i : i + SECTOR]
        if a == b:
            continue
        if b.count(0) != len(b):
            first = next(j for j in range(len(a)) if a[j] != b[j])
            raise AssertionError(
                f"{restored} holds foreign bytes at {pos + i + first}: neither the source's "
                "nor zeros"
            )
        out.append((pos + i, len(b)))
    return out


def _union(*ranges: Iterator[tuple[int, int]]) -> list[tuple[int, int]]:
    return _merge(sorted((a, b - a) for r in ranges for a, b in r), as_ends=True)


def _merge(ranges: Sequence[tuple[int, int]], as_ends: bool = False) -> list[tuple[int, int]]:
    """Merge sorted (offset, length) ranges that touch; as (start, end) pairs if `as_ends`."""
    merged: list[list[int]] = []
    for a, n in ranges:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], a + n)
        else:
            merged.append([a, a + n])
    return [(a, b) if as_ends else (a, b - a) for a, b in merged]


@dataclass(frozen=True)
class Verdict:
    """What the oracle saw on a restored disk: the tool-made manifests of the source (per volume
    name) and the zeroed blocks."""

    manifests: Mapping[str, Manifest]
    deviation: Deviation
    volumes: tuple[GuestVolume, ...]

    def skipped(self, volume: str) -> int:
        """Bytes the restore left zero inside `volume` where the source has data."""
        vol = next(v for v in self.volumes if v.name == volume)
        return self.deviation.within(vol.extents)


def verify_restore(image: GuestImage, source: Path, restored: Path) -> Verdict:
    """Check `restored` against `source` (a disk shaped like `image`) as the module docstring
    says; raise AssertionError naming the first problem of each volume."""
    assert partition_table(restored) == partition_table(source), "partition tables differ"
    volumes = tool_volumes(source, image)
    dev = deviation(source, restored)
    outside = dev.total - sum(dev.within(v.extents) for v in volumes)
    assert outside == 0, f"{outside} bytes zeroed outside every filesystem: {dev.zeroed[:8]}"
    assert tool_volumes(restored, image) == volumes, "volume geometry (sfdisk/LVM) differs"
    manifests: dict[str, Manifest] = {}
    problems: list[str] = []
    for vol in volumes:
        manifests[vol.name] = tool_manifest(source, vol)
        try:
            check_clean(restored, vol)
        except AssertionError as exc:
            check_clean(source, vol)  # a dirty source is the test's fault, not the restore's
            problems.append(f"{vol.name}: checker: {exc}")
            continue
        diff = diff_trees(manifests[vol.name], tool_manifest(restored, vol))
        problems += [f"{vol.name} ({vol.fstype}): {d}" for d in diff[:20]]
    assert not problems, "\n".join(problems)
    return Verdict(manifests, dev, volumes)


def compare_manifests(
    expected: Mapping[str, Manifest], restored: Path, volumes: Sequence[GuestVolume]
) -> None:
    """Every volume of `restored` mounts and holds exactly `expected[volume name]`."""
    problems = []
    for vol in volumes:
        diff = diff_trees(expected[vol.name], tool_manifest(restored, vol))
        problems += [f"{vol.name} ({vol.fstype}): {d}" for d in diff[:20]]
    assert not problems, "\n".join(problems)

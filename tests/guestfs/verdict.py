"""What the allocation map decided for one volume of a test image, and fast image copies.

Shared by the verification tests of the XFS, FAT and LVM parsers.
"""

from __future__ import annotations

from pathlib import Path

from tests.guestfs.imaging import DiskImage, run
from vmaccel.guestfs.allocation import AllocationMap, VolumeReport, build_allocation_map
from vmaccel.guestfs.usage import FsState


def sparse_copy(image: DiskImage, target_dir: Path) -> Path:
    """Copy a (mostly sparse) fixture image keeping its holes: ~20x faster than copyfile."""
    target = target_dir / image.path.name
    run("cp", "--sparse=always", image.path, target)
    return target


def build(path: Path) -> AllocationMap:
    with open(path, "rb") as f:
        return build_allocation_map(f)


def report(path: Path, name: str) -> VolumeReport:
    """The report of volume `name` ("p1", "disk", "vg/lv") of the image at `path`."""
    return next(r for r in build(path).volumes if r.volume.name == name)


def assert_whole(path: Path, name: str, reason: str) -> VolumeReport:
    """Volume `name` is read whole, as UNKNOWN, with `reason` in its stated reason."""
    rep = report(path, name)
    assert rep.state is FsState.UNKNOWN and rep.used_bytes == rep.volume.size, rep
    assert reason in (rep.whole_reason or ""), rep.whole_reason
    return rep


def assert_clean(path: Path, name: str) -> VolumeReport:
    """Volume `name` is CLEAN, without a reason, and gives space up."""
    rep = report(path, name)
    assert rep.state is FsState.CLEAN and rep.whole_reason is None, rep
    assert rep.used_bytes < rep.volume.size // 2
    return rep

"""The mount's file trees obey the rule free-block skipping obeys: a volume whose metadata fails
verification is shown as an error, never as a tree of plausible wrong files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.guestfs.ext4damage import geometry
from tests.guestfs.imaging import DiskImage, patch_bytes, read_bytes
from tests.guestfs.ntfsimage import Volume
from vmaccel.guestfs.browse import browse_disk


def _browse(path: Path) -> dict[str, tuple[bool, str | None]]:
    with open(path, "rb") as f:
        return {v.name: (v.filesystem is not None, v.reason) for v in browse_disk(f)}


def test_damaged_block_bitmap_makes_the_volume_an_error(
    gpt_disk: DiskImage, disk_copy: Callable[[DiskImage], Path]
) -> None:
    path = disk_copy(gpt_disk)
    spec = next(s for s in gpt_disk.filesystems if s.name == "p2")
    geo = geometry(path, spec.offset)
    patch_bytes(path, geo.block(geo.block_bitmap(0)) + 96, bytes(768))
    pristine, damaged = _browse(gpt_disk.path), _browse(path)
    assert pristine["p2"] == (True, None)
    browsable, reason = damaged["p2"]
    assert not browsable
    assert reason is not None
    assert reason.startswith("metadata fails verification: ext4: group 0 block bitmap checksum")
    assert {k: v for k, v in damaged.items() if k != "p2"} == {
        k: v for k, v in pristine.items() if k != "p2"
    }


def test_zeroed_ntfs_bitmap_cluster_makes_the_volume_an_error(
    gpt_disk: DiskImage, disk_copy: Callable[[DiskImage], Path]
) -> None:
    path = disk_copy(gpt_disk)
    spec = next(s for s in gpt_disk.filesystems if s.fstype == "ntfs")
    vol = Volume(read_bytes(path, spec.offset, spec.size))
    lcn = vol.data_attr(6).runs[0].lcn
    assert lcn is not None
    patch_bytes(path, spec.offset + lcn * vol.geo.cluster_size, bytes(vol.geo.cluster_size))
    browsable, reason = _browse(path)[spec.name]
    assert not browsable
    assert reason == (
        "metadata fails verification: ntfs: cluster 0 of the boot sector is marked free in $Bitmap"
    )

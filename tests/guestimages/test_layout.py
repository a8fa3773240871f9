"""The partition tables, LVM metadata and filesystem signatures are where the manifest says."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Mapping

import pytest

from testbed.guestimages import builder, layout
from testbed.guestimages.model import GuestImage
from testbed.guestimages.mounts import loop_device, mounted

SECTOR = 512
# (offset inside the volume, bytes) that identify each filesystem's superblock/boot sector.
MAGIC = {
    "ext4": (1080, b"\x53\xef"),
    "xfs": (0, b"XFSB"),
    "ntfs": (3, b"NTFS    "),
    "vfat": (82, b"FAT32   "),
}


@pytest.mark.parametrize("name", sorted(builder.SPECS))
def test_partition_table_matches_manifest(
    guest_images: Mapping[str, GuestImage], name: str
) -> None:
    image = guest_images[name]
    out = subprocess.run(
        ["sfdisk", "--json", str(image.path)], capture_output=True, text=True, check=True
    ).stdout
    table = json.loads(out)["partitiontable"]
    found = {
        (
            int(p["node"].removeprefix(str(image.path))),
            p["start"] * SECTOR,
            p["size"] * SECTOR,
            p["type"].lower(),
        )
        for p in table["partitions"]
    }
    assert table["label"] == {"gpt": "gpt", "mbr": "dos"}[image.table]
    assert found == set(image.partitions)


def test_gpt_verifies(guest_images: Mapping[str, GuestImage]) -> None:
    out = subprocess.run(
        ["sgdisk", "--verify", str(guest_images["gpt"].path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "No problems found" in out


@pytest.mark.parametrize(
    ("name", "volume"), [(n, v) for n in sorted(builder.SPECS) for v in builder.volume_names(n)]
)
def test_filesystem_signature_at_manifest_offset(
    guest_images: Mapping[str, GuestImage], name: str, volume: str
) -> None:
    vol = guest_images[name].volume(volume)
    where, magic = MAGIC[vol.fstype]
    with open(guest_images[name].path, "rb") as f:
        f.seek(vol.offset + where)  # all signatures lie in the first extent
        assert f.read(len(magic)) == magic


def test_lvm_segments_match_manifest(guest_images: Mapping[str, GuestImage]) -> None:
    image = guest_images["gpt"]
    vol = image.volume("lv-data")
    assert vol.lvm is not None
    vg, lv = vol.lvm
    _, offset, size, _ = next(p for p in image.partitions if p[0] == vol.partition)
    with loop_device(image.path, offset, size, read_only=True) as dev:
        extents = layout.lv_extents(dev, vg, offset)
    assert extents[lv] == vol.extents
    assert len(vol.extents) == 2, "the LV is split by a spacer LV, readers must follow segments"
    assert sum(e.length for e in vol.extents) == vol.size
    assert all(
        offset <= e.disk_offset and e.disk_offset + e.length <= offset + size for e in vol.extents
    )


@pytest.mark.parametrize("volume", ["lv-data", "windows", "esp"])
def test_failure_inside_a_mount_leaves_nothing_behind(
    private_image: Callable[[str], GuestImage], volume: str
) -> None:
    image = private_image("gpt")
    with (
        pytest.raises(RuntimeError, match="boom"),
        mounted(image.path, image.volume(volume), read_only=False) as root,
    ):
        mountpoint = root
        raise RuntimeError("boom")
    assert not os.path.ismount(mountpoint)
    loops = subprocess.run(
        ["losetup", "--list", "--noheadings", "-O", "BACK-FILE"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(image.path) not in loops
    assert not list(image.path.parent.glob(".lv-*")), "LV scratch file left behind"

"""Session fixtures of the corruption matrix: the prepared targets, built on first use.

Import them into a test module (pytest finds fixtures in the module namespace). Targets:
``ext4`` (4 KiB blocks, metadata_csum), ``ext4-lvm`` (1 KiB blocks, an LV in two segments),
``ext3`` (no checksums, no flex_bg), ``ntfs``, ``xfs`` (v5, CRCs), ``fat32``, ``fat16`` and
``fat12``, from the images of tests/guestfs/conftest.py plus a small FAT12 image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import pytest

from testbed.guestimages.content import file_bytes, tree_spec
from testbed.guestimages.model import GuestImage, GuestVolume
from tests.guestfs.corruption import Target
from tests.guestfs.corruption_targets import Get, Prepared, lv_target, partition_target, prepare
from tests.guestfs.imaging import DiskImage, FsSpec, MiB, have, make_tree, mkfs_vfat


@pytest.fixture(scope="session")
def fat12_disk(tmp_path_factory: pytest.TempPathFactory) -> DiskImage:
    """A bare 2 MiB FAT12 filesystem (fewer than 4085 clusters)."""
    if not (have("mkfs.vfat") and have("mcopy")):
        pytest.skip("missing mkfs.vfat or mcopy")
    work = tmp_path_factory.mktemp("fat12")
    files = make_tree(work / "src", 9, big=300_000)
    mkfs_vfat(work / "fat12.img", 2 * MiB, files, work / "src", 12)
    return DiskImage(work / "fat12.img", 2 * MiB, [FsSpec("vfat", 0, 2 * MiB, files, "p1")])


def _spec(image: DiskImage, name: str) -> FsSpec:
    return next(s for s in image.filesystems if s.name == name or s.name.endswith("/" + name))


# Where each partition target lies: (the disk image fixture, its partition there). A target
# itself is seen behind a synthetic MBR, as that MBR's "p1".
PLACES: dict[str, tuple[str, str]] = {
    "ext4": ("gpt_disk", "p2"),
    "ntfs": ("gpt_disk", "p3"),
    "fat32": ("gpt_disk", "p1"),
    "ext3": ("mbr_disk", "p6"),
    "fat16": ("mbr_disk", "p5"),
    "xfs": ("xfs_disk", "p1"),
    "fat12": ("fat12_disk", "p1"),
}


@pytest.fixture(scope="session")
def prepared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Get:
    """name -> Prepared, built on first use and kept for the session."""
    cache: dict[str, Prepared] = {}

    def get(name: str) -> Prepared:
        if name not in cache:
            if name == "ext4-lvm":
                image: DiskImage = request.getfixturevalue("gpt_disk")
                spec = _spec(image, "data")
                target = lv_target(name, image.path, "p4", "data")
            else:
                fixture, part = PLACES[name]
                image = request.getfixturevalue(fixture)
                spec = _spec(image, part)
                target = partition_target(name, spec.fstype, image.path, spec.offset, spec.size)
            cache[name] = prepare(target, spec.files, tmp_path_factory.mktemp("corruption"))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def issue_volume(
    guest_images: Mapping[str, GuestImage], tmp_path_factory: pytest.TempPathFactory
) -> Get:
    """volume name of the guestimages "gpt" image -> Prepared whole-disk target."""
    image = guest_images["gpt"]
    cache: dict[str, Prepared] = {}

    def get(name: str) -> Prepared:
        if name not in cache:
            vol = image.volume(name)
            part = next(n for n, off, _s, _t in image.partitions if off == vol.offset)
            target = Target(
                f"gpt-{name}",
                vol.fstype,
                image.path,
                0,
                image.size,
                0,
                ((0, vol.offset, vol.size),),
                f"p{part}",
            )
            work = tmp_path_factory.mktemp("issue9")
            cache[name] = prepare(target, _guest_files(vol), work)
        return cache[name]

    return get


def _guest_files(vol: GuestVolume) -> dict[str, bytes]:
    """The regular files of a guestimages volume, regenerated from the content spec."""
    entries = {e.path: e for e in tree_spec(vol.fstype, big_file=True)}
    files = {
        path: file_bytes(entries[path], vol.name)
        for path, fe in vol.files.items()
        if fe.kind == "file"
    }
    for path, data in files.items():
        assert hashlib.sha256(data).hexdigest() == vol.files[path].sha256, path
    return files

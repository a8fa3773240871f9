"""The file tree read through guestfs.browse equals the tree the image builder wrote.

For every volume of both standard guest images (incl. the two-segment LVM LV): the same names
(spaces, unicode, 12 levels deep), kinds, sizes, sha256 of contents read through `open`,
symlink targets (never followed, even pointing outside), hard links (one inode, nlink 3),
sparse files, empty files, POSIX modes where the filesystem has them, recorded mtimes.
"""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import Iterator, Mapping

import pytest

from testbed.guestimages import builder
from testbed.guestimages.model import FileExpect, GuestImage, GuestVolume
from vmaccel.guestfs.browse import BrowsedVolume, browse_disk
from vmaccel.guestfs.filesystem import FileStat, FileSystem

VOLUMES = [(n, v) for n in sorted(builder.SPECS) for v in builder.volume_names(n)]
CHUNK = 1 << 20


def walk(fs: FileSystem, path: str = "/") -> Iterator[tuple[str, FileStat]]:
    """(relative path, stat) of everything under `path`, depth first."""
    for st in fs.listdir(path):
        child = f"{path.rstrip('/')}/{st.name}"
        yield child[1:], st
        if st.kind == "dir":
            yield from walk(fs, child)


def sha256_of(fs: FileSystem, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def browsed(image: GuestImage, vol: GuestVolume) -> BrowsedVolume:
    disk = open(image.path, "rb")  # noqa: SIM115 - kept open for the filesystem's lifetime
    found = browse_disk(disk)
    return next(b for b in found if b.volume.segments[0].disk_offset == vol.offset)


def check_entry(fs: FileSystem, path: str, st: FileStat, fe: FileExpect, inodes: dict) -> None:  # type: ignore[type-arg]
    expect_kind = "file" if fe.kind == "hardlink" else fe.kind
    assert st.kind == expect_kind, path
    assert st.error is None, path
    assert fs.stat("/" + path) == st, path
    if fe.mode is not None:
        assert st.mode == fe.mode, path
    if fe.mtime is not None:
        assert st.mtime_ns is not None and st.mtime_ns // 10**9 == fe.mtime, path
    if fe.kind == "symlink":
        assert st.target == fe.target and fs.readlink("/" + path) == fe.target, path
        assert st.size == fe.size, path
    elif fe.kind in ("file", "hardlink"):
        assert st.size == fe.size, path
        assert sha256_of(fs, "/" + path) == fe.sha256, path
    if fe.kind == "hardlink":
        assert fe.target is not None
        assert st.inode == inodes[fe.target] and st.nlink == 3, path


@pytest.mark.parametrize(("name", "volume"), VOLUMES)
def test_tree_matches_manifest(
    guest_images: Mapping[str, GuestImage], name: str, volume: str
) -> None:
    image = guest_images[name]
    vol = image.volume(volume)
    found = browsed(image, vol)
    assert found.filesystem is not None, found.reason
    assert found.fstype == vol.fstype and found.label == vol.label
    fs = found.filesystem
    tree = dict(walk(fs))
    assert sorted(tree) == sorted(vol.files)
    inodes = {p: st.inode for p, st in tree.items()}
    for path, fe in vol.files.items():
        check_entry(fs, path, tree[path], fe, inodes)


def test_volume_names_are_stable_and_path_safe(guest_images: Mapping[str, GuestImage]) -> None:
    image = guest_images["gpt"]
    with open(image.path, "rb") as f:
        found = {b.name: b for b in browse_disk(f)}
    vg, lv = image.volume("lv-data").lvm or ("", "")
    assert {"p1", "p2", "p3", "p4", f"{vg}-{lv}"} <= set(found)
    assert all("/" not in n and n not in (".", "..") for n in found)
    assert found["p4"].filesystem is None and "logical volumes" in (found["p4"].reason or "")
    assert found[f"{vg}-{lv}"].label == "lvdata"


@pytest.mark.parametrize(("name", "volume"), [("gpt", "linux"), ("gpt", "windows"), ("mbr", "xfs")])
def test_sparse_file_streams_in_bounded_memory(
    guest_images: Mapping[str, GuestImage], name: str, volume: str
) -> None:
    image = guest_images[name]
    vol = image.volume(volume)
    fs = browsed(image, vol).filesystem
    assert fs is not None
    expect = vol.files["sparse.img"]
    tracemalloc.start()
    try:
        with fs.open("/sparse.img") as f:
            h, total, holes_zero = hashlib.sha256(), 0, True
            while chunk := f.read(CHUNK):
                h.update(chunk)
                total += len(chunk)
            f.seek(8 << 20)  # inside the first hole
            holes_zero = f.read(4096) == bytes(4096)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == expect.size and h.hexdigest() == expect.sha256 and holes_zero
    assert peak < 4 * CHUNK + (1 << 20), f"peak {peak} bytes for a {total}-byte file"


def test_random_access_reads_match_sequential(guest_images: Mapping[str, GuestImage]) -> None:
    image = guest_images["gpt"]
    vol = image.volume("lv-data")  # data crosses the LV's two segments
    fs = browsed(image, vol).filesystem
    assert fs is not None
    with fs.open("/big/random.bin") as f:
        whole = f.read()
        for offset in (0, 4095, 33_554_431, len(whole) - 10, len(whole)):
            f.seek(offset)
            assert f.read(70_000) == whole[offset : offset + 70_000]
    assert hashlib.sha256(whole).hexdigest() == vol.files["big/random.bin"].sha256


@pytest.mark.parametrize("image_name", ["gpt_disk", "mbr_disk", "xfs_disk"])
def test_small_fixture_contents(image_name: str, request: pytest.FixtureRequest) -> None:
    """The older fixtures add ext3 with 1 KiB blocks (block maps up to double indirect),
    FAT16, FAT32 and XFS populated from a prototype file: every file reads back exactly."""
    image = request.getfixturevalue(image_name)
    with open(image.path, "rb") as disk:
        found = {b.name: b for b in browse_disk(disk)}
        for spec in image.filesystems:
            name = spec.name.replace("/", "-") if "/" in spec.name else spec.name
            fs = found[name].filesystem
            assert fs is not None, found[name].reason
            assert fs.fstype == spec.fstype
            for rel, data in spec.files.items():
                with fs.open("/" + rel) as f:
                    assert f.read() == data, f"{spec.name}:{rel}"

"""The ext4/XFS metadata fast path (guestfs.ext4inode, guestfs.xfsinode) returns exactly what
the generic dissect parsers see, and refuses malformed directory entries with GuestFsError.

The reference walks below read every inode and directory through dissect.extfs / dissect.xfs,
the way fs_ext and fs_xfs did before the fast path.
"""

from __future__ import annotations

import stat as statmod
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from dissect.extfs import ExtFS
from dissect.xfs import XFS

from testbed.guestimages import builder
from testbed.guestimages.model import GuestImage
from tests.guestfs.imaging import MiB, have, run
from tests.guestfs.test_browse_trees import VOLUMES, walk
from vmaccel.guestfs.browse import browse_disk
from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.ext4inode import parse_dirents, parse_inode
from vmaccel.guestfs.filesystem import FileStat, FileSystem
from vmaccel.guestfs.volume import VolumeView
from vmaccel.guestfs.xfsinode import parse_core

Row = tuple[str, str, int, int | None, int | None, int | None, int | None, int, int, str | None]
_KINDS = {statmod.S_IFREG: "file", statmod.S_IFDIR: "dir", statmod.S_IFLNK: "symlink"}


def _row(name: str, mode: int, size: int, uid: int, gid: int, mtime_ns: int, nlink: int,
         inode: int, node: Any) -> Row:  # fmt: skip
    kind = _KINDS.get(statmod.S_IFMT(mode), "other")
    target = str(node.link) if kind == "symlink" else None
    if target is not None:
        size = len(target.encode("utf-8", "surrogateescape"))
    mode = statmod.S_IMODE(mode)
    return (name, kind, size, mode, uid, gid, mtime_ns, nlink, int(inode), target)


def _dissect_walk(node: Any, prefix: str, row: Any) -> Iterator[tuple[str, Row]]:
    for child in node.iterdir():
        if child.filename in (".", ".."):
            continue
        path = f"{prefix}/{child.filename}"
        r = row(child)
        yield path[1:], r
        if r[1] == "dir":
            yield from _dissect_walk(child, path, row)


def _ext_row(node: Any) -> Row:
    i = node.inode
    uid, gid = i.i_uid | i.i_uid_high << 16, i.i_gid | i.i_gid_high << 16
    return _row(node.filename, i.i_mode, node.size, uid, gid, node.mtime_ns,
                i.i_links_count, node.inum, node)  # fmt: skip


def _xfs_row(node: Any) -> Row:
    i = node.inode
    nlink = i.di_nlink if i.di_version >= 2 else i.di_onlink
    return _row(node.filename, i.di_mode, node.size, i.di_uid, i.di_gid, node.mtime_ns, nlink,
                node.inum, node)  # fmt: skip


def _reference(view: VolumeView, fstype: str) -> dict[str, Row]:
    if fstype == "xfs":
        return dict(_dissect_walk(XFS(view).root, "", _xfs_row))
    return dict(_dissect_walk(ExtFS(view).root, "", _ext_row))


def _fast(fs: FileSystem) -> dict[str, Row]:
    def row(st: FileStat) -> Row:
        return (st.name, st.kind, st.size, st.mode, st.uid, st.gid, st.mtime_ns, st.nlink,
                st.inode, st.target)  # fmt: skip

    return {path: row(st) for path, st in walk(fs)}


def _fast_path_volumes() -> list[tuple[str, str]]:
    """The (image, volume) pairs whose filesystem has a fast metadata path (ext4, XFS)."""
    kinds = {}
    for name, spec in builder.SPECS.items():
        kinds.update({(name, p.name): p.fstype for p in spec.parts})
        kinds.update({(name, f"lv-{lv.name}"): lv.fstype for lv in spec.lvs})
    return [pair for pair in VOLUMES if kinds.get(pair) in ("ext4", "xfs")]


@pytest.mark.parametrize(("name", "volume"), _fast_path_volumes())
def test_fast_path_matches_dissect(
    guest_images: Mapping[str, GuestImage], name: str, volume: str
) -> None:
    image = guest_images[name]
    vol = image.volume(volume)
    with open(image.path, "rb") as disk:
        found = next(b for b in browse_disk(disk) if b.volume.segments[0].disk_offset == vol.offset)
        assert found.filesystem is not None, found.reason
        fast = _fast(found.filesystem)
        reference = _reference(VolumeView(disk, found.volume), vol.fstype)
    assert fast == reference
    assert len(fast) == len(vol.files)


@pytest.mark.skipif(not have("mkfs.ext4"), reason="needs mkfs.ext4")
def test_inline_data_directories_and_files(tmp_path: Path) -> None:
    """With inline_data, small directories keep their entries in i_block (after the parent's
    inode number) and small files their bytes; both read back exactly."""
    src = tmp_path / "src"
    files = {"d1/a.txt": b"hi\n", "d1/b.txt": b"x" * 100, "empty/.keep": b""}
    files |= {f"d1/d2/long-name-{i:02d}": f"{i}\n".encode() for i in range(40)}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    img = tmp_path / "fs.img"
    with open(img, "wb") as f:
        f.truncate(16 * MiB)
    run("mkfs.ext4", "-q", "-F", "-O", "inline_data", "-d", src, img)
    assert "Flags: 0x10000000" in run("debugfs", "-R", "stat /d1", img)  # d1 is inline
    with open(img, "rb") as disk:
        (found,) = browse_disk(disk)
        fs = found.filesystem
        assert fs is not None, found.reason
        tree = dict(walk(fs))
        got = {p: fs.open("/" + p).read() for p, st in tree.items() if st.kind == "file"}
    assert got == files
    assert {p for p, st in tree.items() if st.kind == "dir"} == {
        "d1", "d1/d2", "empty", "lost+found"
    }  # fmt: skip


def _dirent(ino: int, rec_len: int, name: bytes) -> bytes:
    return struct.pack("<IHBB", ino, rec_len, len(name), 1) + name


def test_dirents_skip_unused_and_htree_entries() -> None:
    block = bytearray(1024)
    block[0:12] = _dirent(2, 12, b".")
    block[12:24] = _dirent(2, 12, b"..")
    block[24:36] = _dirent(0, 12, b"gone")[:12]  # deleted: inode 0
    block[36:48] = _dirent(99, 12, b"big")  # beyond the inode count: skipped
    block[48:1012] = _dirent(12, 964, b"a-file").ljust(964, b"\0")
    block[1012:1024] = struct.pack("<IHBBI", 0, 12, 0, 0xDE, 0)  # metadata_csum tail
    got = list(parse_dirents(bytes(block), 50, True, "test"))
    assert got == [(2, b"."), (2, b".."), (12, b"a-file")]


@pytest.mark.parametrize(
    "entry",
    [
        _dirent(12, 0, b"x"),  # rec_len 0 would loop forever
        _dirent(12, 10, b"x"),  # shorter than the smallest entry
        _dirent(12, 14, b"x"),  # not a multiple of 4
        _dirent(12, 12, b"name-longer-than-rec_len"),
        _dirent(12, 2048, b"x"),  # past the end of the block
    ],
)
def test_damaged_dirent_is_a_guestfs_error(entry: bytes) -> None:
    block = entry[:1024].ljust(1024, b"\0")
    with pytest.raises(GuestFsError, match="damaged directory entry at byte 0"):
        list(parse_dirents(block, 50, True, "test"))


def test_ext4_time_decoding() -> None:
    raw = bytearray(256)
    struct.pack_into("<H", raw, 0, 0o100644)
    struct.pack_into("<iii", raw, 0x08, -1, 5, 0x7FFFFFFF)  # atime, ctime, mtime
    # ctime: epoch bits 1 (+2**32 s), 7 ns; mtime: 999 ns; atime: outside i_extra_isize
    struct.pack_into("<HHIII", raw, 0x80, 12, 0, 1 | 7 << 2, 999 << 2, 3)
    ino = parse_inode(bytes(raw), 0, 256)
    assert ino.ctime_ns == (5 + (1 << 32)) * 10**9 + 7
    assert ino.mtime_ns == 0x7FFFFFFF * 10**9 + 999
    assert ino.atime_ns == -(10**9)  # signed seconds, before 1970
    assert parse_inode(bytes(raw), 0, 128).ctime_ns == 5 * 10**9  # no extra fields


def test_xfs_core_magic_and_times() -> None:
    raw = bytearray(512)
    struct.pack_into(">HHBB", raw, 0, 0x494E, 0o40755, 3, 2)
    struct.pack_into(">qqq", raw, 0x20, -(2 << 32), 3 << 32 | 5, 0)
    ino = parse_core(bytes(raw), 0, 128)
    assert (ino.atime_ns, ino.mtime_ns) == (-2 * 10**9, 3 * 10**9 + 5)
    struct.pack_into(">Q", raw, 0x78, 1 << 3)  # bigtime: ns since -2**31 s
    struct.pack_into(">Q", raw, 0x28, (1 << 31) * 10**9 + 42)
    assert parse_core(bytes(raw), 0, 128).mtime_ns == 42
    raw[0:2] = b"XX"
    with pytest.raises(GuestFsError, match="bad magic"):
        parse_core(bytes(raw), 0, 128)

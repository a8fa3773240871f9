"""Damaged metadata and hostile paths: a GuestFsError for that path only, never a parser crash.

Damage is located independently of our code where possible (debugfs for ext4 inodes; the
record's "FILE" signature and UTF-16 name for NTFS).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from testbed.guestimages.model import GuestImage, GuestVolume
from tests.guestfs.imaging import have, run
from vmaccel.guestfs.browse import browse_disk
from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.filesystem import FileSystem


def _fs(image: GuestImage, vol: GuestVolume) -> tuple[BinaryIO, FileSystem]:
    disk = open(image.path, "rb")  # noqa: SIM115 - closed by the caller
    found = next(b for b in browse_disk(disk) if b.volume.segments[0].disk_offset == vol.offset)
    assert found.filesystem is not None
    return disk, found.filesystem


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _ext_inode_offset(image: Path, fs_offset: int, ino: int) -> int:
    out = run("debugfs", "-R", f"imap <{ino}>", f"{image}?offset={fs_offset}")
    block, offset = re.search(r"located at block (\d+), offset (0x[0-9a-f]+)", out).groups()  # type: ignore[union-attr]
    with open(image, "rb") as f:
        f.seek(fs_offset + 1024 + 0x18)
        block_size = 1024 << int.from_bytes(f.read(4), "little")
    return fs_offset + int(block) * block_size + int(offset, 16)


@pytest.mark.skipif(not have("debugfs"), reason="needs debugfs")
def test_damaged_ext4_extent_tree_fails_only_that_file(
    private_image: Callable[[str], GuestImage],
) -> None:
    image = private_image("gpt")
    vol = image.volume("linux")
    disk, fs = _fs(image, vol)
    file_ino, dir_ino = fs.stat("/README.txt").inode, fs.stat("/docs").inode
    disk.close()
    for ino in (file_ino, dir_ino):  # extent header magic in i_block
        _patch(image.path, _ext_inode_offset(image.path, vol.offset, ino) + 0x28, b"\xde\xad")
        reseal = f"set_inode_field <{ino}> checksum calc"  # else the inode checksum fails first
        run("debugfs", "-n", "-w", "-R", reseal, f"{image.path}?offset={vol.offset}")
    disk, fs = _fs(image, vol)
    with disk:
        with pytest.raises(GuestFsError, match=r"/README.txt.*bad extent node"):
            fs.open("/README.txt")
        with pytest.raises(GuestFsError, match="/docs"):
            fs.listdir("/docs")
        assert fs.stat("/README.txt").size == vol.files["README.txt"].size
        assert {s.name for s in fs.listdir("/")} >= {"README.txt", "docs", "logs"}
        assert fs.open("/logs/app-00.log").read() != b""


def test_damaged_ntfs_mft_record_fails_only_that_entry(
    private_image: Callable[[str], GuestImage],
) -> None:
    image = private_image("gpt")
    vol = image.volume("windows")
    data = image.path.read_bytes()[vol.offset : vol.offset + vol.size]
    name = "README.txt".encode("utf-16-le")
    records = [
        m.start() for m in re.finditer(b"FILE", data) if name in data[m.start() : m.start() + 1024]
    ]
    assert records, "README.txt's MFT record not found"
    for rec in records:  # the record and its mirror copy, if any
        _patch(image.path, vol.offset + rec, b"XXXX")
    disk, fs = _fs(image, vol)
    with disk:
        listed = {s.name: s for s in fs.listdir("/")}
        assert listed["README.txt"].error and listed["README.txt"].kind == "other"
        with pytest.raises(GuestFsError, match=r"README\.txt"):
            fs.stat("/README.txt")
        with pytest.raises(GuestFsError):
            fs.open("/README.txt")
        assert listed["docs"].error is None and fs.listdir("/docs")
        assert fs.open("/secret.key").read() != b""


def test_path_errors(guest_images: dict[str, GuestImage]) -> None:
    image = guest_images["gpt"]
    disk, fs = _fs(image, image.volume("linux"))
    with disk:
        with pytest.raises(FileNotFoundError) as missing:
            fs.stat("/no/such/file")
        assert isinstance(missing.value, GuestFsError)
        with pytest.raises(NotADirectoryError):
            fs.listdir("/README.txt")
        with pytest.raises(NotADirectoryError):
            fs.stat("/README.txt/x")
        with pytest.raises(IsADirectoryError):
            fs.open("/docs")
        with pytest.raises(GuestFsError, match="not a symlink"):
            fs.readlink("/README.txt")
        for bad in ("/docs/../etc", "relative/path"):
            with pytest.raises(GuestFsError):
                fs.stat(bad)
        # never followed: a symlink to a directory is not a directory to this API
        assert fs.stat("/links/deep-dir").kind == "symlink"
        with pytest.raises(NotADirectoryError):
            fs.listdir("/links/deep-dir")
        assert fs.stat("//docs/./") == fs.stat("/docs")

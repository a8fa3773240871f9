"""Hostile guest metadata in the mount (issue 10): one damaged volume, the others untouched.

A backup of the GPT test disk whose ext4 volume (p2) has a damaged superblock field (its
checksum no longer matches) is mounted with a real FUSE mount. That volume's files/ entry is
shown, and listing it or any path below fails with EIO (never a file of the damaged tree),
while every file of the other volumes (FAT32 p1, NTFS p3, the LV) reads byte-identical to the
pristine disk.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.tally import Tally, record
from tests.faults.treefuzz import READ_HEAD, READ_TAIL, Walk, browse_all, whole_disk
from tests.fusemount.conftest import (
    MakeRepo,
    Mounted,
    backup_image,
    make_repo,
    mount_repo,
    needs_fuse,
)
from tests.guestfs.conftest import gpt_disk
from tests.guestfs.corruption import Mutation, Patch
from tests.guestfs.corruption_fixtures import prepared
from tests.guestfs.corruption_targets import Get
from tests.guestfs.imaging import DiskImage

__all__ = ["gpt_disk", "make_repo", "mount_repo", "prepared"]  # fixtures
pytestmark = [needs_fuse, pytest.mark.fuse]

SUITE = "test_fuzz_guestfs_mount"
DAMAGE = Mutation("superblock", "ext4 s_inodes_count -> 0xffffffff", (Patch(1024, b"\xff" * 4),))


def _mounted_walk(root: Path) -> dict[str, tuple[str, int, str]]:
    """path -> (kind, size, digest) under `root`, digests as `treefuzz.walk` takes them."""
    out: dict[str, tuple[str, int, str]] = {}
    for here, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(here) / name
            rel = "/" + str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("symlink", p.lstat().st_size, f"-> {os.readlink(p)}")
            elif p.is_dir():
                out[rel] = ("dir", 0, "")
            else:
                out[rel] = ("file", p.stat().st_size, _digest(p))
    return out


def _digest(path: Path) -> str:
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read(READ_HEAD))
        size = f.seek(0, 2)
        if size > READ_HEAD:
            f.seek(max(READ_HEAD, size - READ_TAIL))
            digest.update(f.read(READ_TAIL))
    return digest.hexdigest()


def _expected(seen: Walk) -> dict[str, tuple[str, int, str]]:
    return {p: (k, s if k != "dir" else 0, d) for p, k, s, d in seen.entries}


def test_damaged_volume_fails_alone_in_the_mount(
    prepared: Get,
    gpt_disk: DiskImage,
    make_repo: MakeRepo,
    mount_repo: Callable[..., Mounted],
    tmp_path: Path,
) -> None:
    target = whole_disk(prepared("ext4").target, gpt_disk.size)
    pristine = browse_all(target, Mutation("none", "pristine", ()))
    damaged = browse_all(target, DAMAGE)
    assert isinstance(damaged["p2"], str), "the damage must make p2 unbrowsable"
    image = tmp_path / "disk.img"
    subprocess.run(["cp", "--sparse=always", gpt_disk.path, image], check=True)
    with open(image, "r+b") as f:
        for patch in DAMAGE.patches:
            f.seek(target.fs_segments[0][1] + patch.offset)
            f.write(patch.data)
    repo = make_repo()
    backup_image(repo, "fuzz-vm", {"disk-1": image})
    m = mount_repo(repo, "--vm", "fuzz-vm")
    backup = m.path / "fuzz-vm" / os.readlink(m.path / "fuzz-vm" / "latest")
    files = next(p for p in backup.rglob("files") if p.is_dir())
    tally = Tally(SUITE, "fuzz_case", notes=["ext4 superblock damage under a FUSE mount"])
    wrong, compared = [], []
    for name, seen in pristine.items():
        if not isinstance(seen, Walk) or name == "p2":
            continue
        got = _mounted_walk(files / name)
        compared.append((name, len(got)))
        if got != _expected(seen):
            wrong.append(name)
    p2 = files / "p2"
    assert "p2" in os.listdir(files), "the damaged volume must be shown, not hidden"
    assert p2.is_dir()
    try:
        shown = os.listdir(p2)
    except OSError as exc:  # the listing is refused: no file of the damaged tree is shown
        assert exc.errno == errno.EIO, exc
        shown = []
    else:
        shown = shown or ["(an empty listing instead of EIO)"]
    with pytest.raises(OSError) as opened:
        (p2 / "big" / "random.bin").stat()
    assert opened.value.errno == errno.EIO
    tally.add(wrong=bool(wrong) or bool(shown))
    record(tally)
    assert len(compared) == 3 and all(n for _v, n in compared), compared
    assert not wrong, f"volumes read differently under the mount: {wrong}"
    assert shown == [], f"the damaged volume shows files: {shown}"

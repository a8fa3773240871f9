"""The file catalog of a changed volume, followed from the parent's listing through the
changed blocks, equals a whole walk of the same volume record for record."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

import pytest

from testbed.guestimages.guestday import GuestDay
from testbed.guestimages.model import GuestImage
from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.catalog.filecatalog import FileRecord, listing_of
from vmaccel.cli.app import main
from vmaccel.guestfs.browse import browse_disk
from vmaccel.plugin.engine.fileindex import index_image
from vmaccel.plugin.engine.treewalk import DeltaCounts, walk


def _backup(repo: Path, image: Path) -> None:
    args = ["backup", "--repo", str(repo), "--source", f"file:{image}", "--name", "g", "--json"]
    assert main(args) == 0


def _catalogued_and_walked(repo: Path) -> dict[str, tuple[list[FileRecord], list[FileRecord]]]:
    """Per volume of the newest backup: its catalogued listing and a whole walk of it."""
    out = {}
    with Repository.open(repo) as r:
        img = r.image(r.backups("g")[-1], "disk0")
        with r.open_image(img) as reader:
            for vol in browse_disk(cast(BinaryIO, reader), img.size):
                if vol.filesystem is None:
                    continue
                listing = listing_of(r.files, img.id, vol.name)
                assert listing is not None, vol.name
                stored = sorted(r.files.listing_entries(listing))
                out[vol.name] = (stored, sorted(walk(vol.filesystem)))
    return out


def _followed(repo: Path) -> tuple[int, DeltaCounts]:
    """A catalogue pass over the newest backup again: the volumes it followed from the
    parent's listing, and what following took."""
    with Repository.open(repo, write=True) as r:
        first, second = r.backups("g")[-2:]
        img, parent = r.image(second, "disk0"), r.image(first, "disk0")
        counts = DeltaCounts()
        return index_image(r, img, parent, counts).followed, counts


def _before_and_after(tmp_path: Path, image: Path, change: Callable[[], Path]) -> Path:
    """A repository with a backup of ``image``, then one of what ``change()`` returns."""
    repo = tmp_path / "repo"
    Repository.init(repo, RepositoryConfig())
    _backup(repo, image)
    _backup(repo, change())
    return repo


def _followed_equals_whole(repo: Path, volumes: int) -> tuple[set[str], DeltaCounts]:
    """Asserts that ``volumes`` volumes were followed and that every catalogued listing of
    the newest backup equals a whole walk; returns the paths listed and the counts."""
    followed, counts = _followed(repo)
    assert followed == volumes
    paths: set[str] = set()
    for name, (stored, whole) in _catalogued_and_walked(repo).items():
        assert stored == whole, name
        paths |= {r.path for r in stored}
    return paths, counts


def test_a_guest_day_followed_from_the_parent_equals_a_whole_walk(
    tmp_path: Path,
    private_image: Callable[[str], GuestImage],
    guest_day: Callable[..., GuestDay],
) -> None:
    image = private_image("gpt")
    repo = _before_and_after(tmp_path, image.path,
                             lambda: guest_day(image, fraction=0.2, seed=5).image.path)  # fmt: skip
    # both ext4 volumes (the partition and the logical volume) changed and were followed
    _followed_equals_whole(repo, 2)


def _reshape(root: Path) -> None:
    """What a day of an administrator does to a tree: new, renamed, removed directories,
    modes, links, a directory grown past one block, files truncated and grown."""
    some_dirs = sorted(p for p in root.glob("*/*") if p.is_dir() and "lost+found" not in str(p))
    assert len(some_dirs) >= 2, some_dirs
    moved, doomed = some_dirs[0], some_dirs[-1]
    os.rename(moved, moved.with_name(moved.name + "-renamed"))
    if doomed.exists():
        shutil.rmtree(doomed)
    big = root / "many"
    big.mkdir()
    for i in range(600):  # several directory blocks, an extent tree with more than the root
        (big / f"entry-{i:04d}-{'x' * 40}").write_bytes(b"%d" % i)
    (root / "fresh" / "deep" / "er").mkdir(parents=True)
    (root / "fresh" / "deep" / "er" / "leaf.txt").write_text("leaf\n")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    files[0].chmod(0o600)
    os.link(files[1], root / "hardlink")
    os.symlink("many/entry-0001-" + "x" * 40, root / "a-symlink")
    with open(files[2], "r+b") as f:
        f.truncate(3)
    os.utime(files[3], ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))


def _make_ext4(tmp_path: Path, fs_mib: int = 96) -> Path:
    """A 96 MiB image holding an ext4 filesystem of ``fs_mib`` MiB made by mkfs from a tree of
    400 directories and 4,000 files, so that its inodes span many of the repository's 64 KiB
    blocks."""
    tree = tmp_path / "tree"
    for d in range(400):
        sub = tree / f"dir{d // 20:02d}" / f"sub{d:03d}"
        sub.mkdir(parents=True)
        for n in range(10):
            (sub / f"file{n}.txt").write_bytes(b"%d/%d\n" % (d, n) * (n + 1))
    image = tmp_path / "ext4.img"
    with open(image, "wb") as f:
        f.truncate(96 * 1024 * 1024)
    mkfs = ["mkfs.ext4", "-q", "-F", "-b", "4096", "-I", "256", "-d", str(tree), str(image)]
    subprocess.run([*mkfs, f"{fs_mib}M"], check=True)
    return image


@pytest.fixture
def ext4_image(tmp_path: Path) -> Path:
    return _make_ext4(tmp_path)


@contextlib.contextmanager
def _loop_mounted(image: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="vmaccel-mnt-") as mnt:
        subprocess.run(["mount", "-o", "loop", str(image), mnt], check=True)
        try:
            yield Path(mnt)
        finally:
            subprocess.run(["umount", mnt], check=True)


def test_a_small_change_lists_only_the_directories_it_touched(
    tmp_path: Path, ext4_image: Path
) -> None:
    def change() -> Path:
        with _loop_mounted(ext4_image) as root:
            (root / "dir07" / "sub150" / "file3.txt").write_text("changed\n")
            (root / "dir11" / "sub222" / "new.txt").write_text("new\n")
        return ext4_image

    paths, counts = _followed_equals_whole(_before_and_after(tmp_path, ext4_image, change), 1)
    assert counts.kept > 3000 and counts.listed < 100, counts  # of 421 directories
    assert "/dir11/sub222/new.txt" in paths


@pytest.mark.slow
def test_renames_removals_modes_and_links_followed_equal_a_whole_walk(
    tmp_path: Path, ext4_image: Path
) -> None:
    def change() -> Path:
        with _loop_mounted(ext4_image) as root:
            _reshape(root)
        return ext4_image

    paths, _ = _followed_equals_whole(_before_and_after(tmp_path, ext4_image, change), 1)
    assert "/fresh/deep/er/leaf.txt" in paths and "/hardlink" in paths
    assert sum(p.startswith("/many/") for p in paths) >= 600


def test_an_entry_written_without_touching_its_directory_inode_is_seen(
    tmp_path: Path, ext4_image: Path
) -> None:
    """debugfs links a name into a directory block without rewriting the directory's inode:
    only the entry blocks changed, and the catalogue must still list the new name."""
    def change() -> Path:
        link = "ln /dir05/sub100/file1.txt /dir05/sub100/second-name"
        subprocess.run(["debugfs", "-w", "-R", link, str(ext4_image)], check=True,
                       capture_output=True)  # fmt: skip
        return ext4_image

    paths, _ = _followed_equals_whole(_before_and_after(tmp_path, ext4_image, change), 1)
    assert "/dir05/sub100/second-name" in paths


def test_a_grown_filesystem_is_walked_whole(tmp_path: Path) -> None:
    """resize2fs adds groups (another layout): the parent's listing is not followed."""
    image = _make_ext4(tmp_path, fs_mib=64)

    def grow() -> Path:
        subprocess.run(["e2fsck", "-f", "-y", str(image)], check=True, capture_output=True)
        subprocess.run(["resize2fs", str(image), "96M"], check=True, capture_output=True)
        return image

    repo = _before_and_after(tmp_path, image, grow)
    with Repository.open(repo, write=True) as r:
        first, second = r.backups("g")[-2:]
        counts = index_image(r, r.image(second, "disk0"), r.image(first, "disk0"))
    assert (counts.walked, counts.followed) == (1, 0)
    for name, (stored, whole) in _catalogued_and_walked(repo).items():
        assert stored == whole, name

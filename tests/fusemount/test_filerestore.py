"""File restore (`vmaccel restore file`): hostile guest trees write only inside the target.

The hostile tree is a real ext4 filesystem made with `mkfs.ext4 -d` from a staging directory
holding odd names (spaces, newline, unicode, invalid UTF-8), symlinks pointing everywhere, a
fifo, a device node, a sparse file and hard links. NTFS and XFS come from the guest image
builder and are checked against its manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from testbed.guestimages.model import GuestImage
from tests.fusemount.conftest import BS, MakeRepo, MiB, backup_image
from tests.fusemount.corrupt import corrupt_block
from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.cli.app import main
from vmaccel.fusemount.filerestore import (
    FileRestoreReport,
    display,
    resolve_guest_path,
    restore_files,
    restore_guest_paths,
    symlink_refusal,
    unsafe_name,
)
from vmaccel.fusemount.guestfiles import GuestFiles
from vmaccel.fusemount.repoview import RepositoryView
from vmaccel.guestfs.filesystem import FileStat
from vmaccel.vocabulary.errors import NotFound, UsageError

MTIME = 1_600_000_000
BAD = b"bad\xff\xfename"
NEWLINE = b"new\nline"
UNICODE = "ünïcödé ☕.txt".encode()
SPARSE = 10 * MiB
is_root = os.geteuid() == 0


def build_hostile_tree(root: Path) -> dict[bytes, bytes]:
    """The staging tree; returns {relative path: contents} of its regular files."""
    rnd = random.Random(11)
    files = {
        b"with space.txt": b"spaces\n",
        NEWLINE: b"newline in the name\n",
        UNICODE: b"unicode\n",
        BAD: b"invalid utf-8 in the name\n",
        b"real/file.txt": b"the real file\n",
        b"mode640.txt": rnd.randbytes(70_000),
        b"hard-a": b"two names, one inode\n",
    }
    rb = os.fsencode(root)
    os.mkdir(rb + b"/real", 0o750)
    os.mkdir(rb + b"/sub")
    for rel, data in files.items():
        with open(rb + b"/" + rel, "wb") as f:
            f.write(data)
    os.chmod(rb + b"/mode640.txt", 0o640)
    os.link(rb + b"/hard-a", rb + b"/hard-b")
    files[b"hard-b"] = files[b"hard-a"]
    with open(rb + b"/sparse.bin", "wb") as f:  # 10 MiB, data only at 0 and 5 MiB
        f.truncate(SPARSE)
        f.write(b"S" * 4096)
        f.seek(5 * MiB)
        f.write(b"T" * 8192)
    files[b"sparse.bin"] = b"S" * 4096 + bytes(5 * MiB - 4096) + b"T" * 8192 + bytes(
        SPARSE - 5 * MiB - 8192)
    links = {
        b"passwd-link": b"/etc/passwd",      # absolute: skipped
        b"up-link": b"../../..",             # escapes: skipped
        b"abs-dir": b"/tmp",                 # absolute directory link: skipped
        b"sneaky": b"real/../../x",          # '..' after a name: skipped
        b"sub/escape": b"../../../x",        # climbs above DIR from p1/sub: skipped
        b"sibling-link": b"with space.txt",  # restored
        b"dirlink": b"real",                 # a directory symlink: restored as a symlink
        b"sub/up-one": b"../real/file.txt",  # restored
        b"to-p1": b"../p1/real",             # stays inside DIR: restored
    }
    for rel, target in links.items():
        os.symlink(target, rb + b"/" + rel)
    os.mkfifo(rb + b"/fifo")
    if is_root:
        os.mknod(rb + b"/null-dev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    for dirpath, dirnames, filenames in os.walk(rb, topdown=False):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (MTIME - 5, MTIME), follow_symlinks=False)
    return files


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[bytes, bytes]]:
    """A 64 MiB GPT disk with one ext4 partition made from the hostile staging tree."""
    base = tmp_path_factory.mktemp("hostile")
    tree = base / "tree"
    tree.mkdir()
    files = build_hostile_tree(tree)
    image = base / "disk.raw"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(["sgdisk", "-n", "1:2048:+40M", "-t", "1:8300", str(image)],
                   check=True, capture_output=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", f"offset={MiB}", "-d", str(tree),
                    str(image), "40M"], check=True, capture_output=True)
    return image, files


@pytest.fixture
def hostile_repo(make_repo: MakeRepo, hostile: tuple[Path, dict[bytes, bytes]]) -> Path:
    repo = make_repo()
    backup_image(repo, "evil", {"disk0": hostile[0]})
    return repo


def listing(root: Path) -> set[bytes]:
    """Every path below ``root`` (bytes, relative), without following symlinks."""
    rb = os.fsencode(root)
    out = set()
    for dirpath, dirnames, filenames in os.walk(rb):
        for name in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), rb))
    return out


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for rel in sorted(listing(root)):
        p = os.path.join(os.fsencode(root), rel)
        st = os.lstat(p)
        h.update(rel + repr((st.st_mode, st.st_size, st.st_mtime_ns)).encode())
        if stat.S_ISREG(st.st_mode):
            with open(p, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.fixture
def arena(tmp_path: Path) -> tuple[Path, Path]:
    """(DIR, sentinel): the restore target and a directory next to it that must not change."""
    sentinel = tmp_path / "arena" / "sentinel"
    sentinel.mkdir(parents=True)
    (sentinel / "victim").write_bytes(b"untouched\n")
    return tmp_path / "arena" / "restore", sentinel


def restore(repo: Path, paths: list[str], target: Path, overwrite: bool = False,
            guest_cls: type[GuestFiles] = GuestFiles) -> FileRestoreReport:
    with Repository.open(repo) as r:
        view = RepositoryView(r)
        if guest_cls is GuestFiles:
            return restore_guest_paths(view, r.backups()[-1].id, paths, target, overwrite)
        guest = guest_cls(view.open_image)
        try:
            vols = guest.volumes(view.disks(r.backups()[-1].id))
            sources = [resolve_guest_path(guest, vols, p) for p in paths]
            return restore_files(guest, sources, target, overwrite)
        finally:
            guest.close()


EXPECTED_SKIPS = {
    "p1/passwd-link": "absolute symlink target",
    "p1/up-link": "symlink target escapes the restore directory",
    "p1/abs-dir": "absolute symlink target",
    "p1/sneaky": "symlink target has '..' after a name",
    "p1/sub/escape": "symlink target escapes the restore directory",
    "p1/fifo": "device node, fifo or socket: not restored",
}
if is_root:
    EXPECTED_SKIPS["p1/null-dev"] = "device node, fifo or socket: not restored"


def test_hostile_tree_is_restored_only_inside_the_target(
        hostile_repo: Path, hostile: tuple[Path, dict[bytes, bytes]],
        arena: tuple[Path, Path]) -> None:
    target, sentinel = arena
    before = tree_digest(sentinel)
    report = restore(hostile_repo, ["p1"], target)
    files = hostile[1]
    restored_links = {b"sibling-link": b"with space.txt", b"dirlink": b"real",
                      b"sub/up-one": b"../real/file.txt", b"to-p1": b"../p1/real"}
    dirs = {b"real", b"sub", b"lost+found"}
    assert listing(target) == {b"p1"} | {b"p1/" + p for p in [*files, *restored_links, *dirs]}
    assert {e.path: e.reason.split(" (")[0] for e in report.skipped} == EXPECTED_SKIPS
    assert report.failed == ()
    assert report.files == len(files) and report.symlinks == len(restored_links)
    assert report.dirs == len(dirs) + 1 and report.hardlink_copies == 1
    assert report.bytes == sum(len(v) for v in files.values())
    root = os.fsencode(target / "p1")
    for rel, data in files.items():
        p = root + b"/" + rel
        st = os.lstat(p)  # before reading: reading may update the atime (relatime)
        assert st.st_mtime_ns == MTIME * 10**9 and st.st_atime_ns == (MTIME - 5) * 10**9, rel
        with open(p, "rb") as f:
            assert f.read() == data, rel
        assert stat.S_IMODE(st.st_mode) == (0o640 if rel == b"mode640.txt" else 0o644), rel
    for rel, link in restored_links.items():
        assert os.readlink(root + b"/" + rel) == link
        assert os.lstat(root + b"/" + rel).st_mtime_ns == MTIME * 10**9
    assert stat.S_IMODE(os.stat(root + b"/real").st_mode) == 0o750
    assert os.stat(root + b"/real").st_mtime_ns == MTIME * 10**9
    assert os.stat(root + b"/hard-a").st_ino != os.stat(root + b"/hard-b").st_ino  # copies
    sparse = os.stat(root + b"/sparse.bin")
    assert sparse.st_size == SPARSE and sparse.st_blocks * 512 <= 64 * 1024  # holes kept
    # nothing outside DIR: the arena holds DIR and the untouched sentinel only
    assert sorted(os.listdir(target.parent)) == ["restore", "sentinel"]
    assert tree_digest(sentinel) == before and os.listdir(sentinel) == ["victim"]
    text = "\n".join(report.summary())
    assert display((b"p1", NEWLINE)) == "p1/new\\nline" and display((BAD,)) == "bad\\xff\\xfename"
    assert len(text.splitlines()) == 2 + len(EXPECTED_SKIPS)


def test_existing_entries_and_planted_symlinks(hostile_repo: Path,
                                              arena: tuple[Path, Path]) -> None:
    target, sentinel = arena
    target.mkdir()
    os.symlink("../sentinel", target / "p1")  # DIR/p1 is a symlink out of DIR
    report = restore(hostile_repo, ["p1"], target, overwrite=True)
    assert [(e.path, e.reason) for e in report.failed] == [
        ("p1", "a symlink is in the way (never followed)")]
    assert report.files == 0 and os.listdir(sentinel) == ["victim"]
    os.unlink(target / "p1")
    (target / "p1").mkdir()
    os.symlink("../../sentinel/victim", target / "p1" / "with space.txt")
    report = restore(hostile_repo, ["p1/with space.txt"], target / "p1")
    assert [(e.path, e.reason) for e in report.skipped] == [
        ("with space.txt", "exists (pass --overwrite to replace)")]
    report = restore(hostile_repo, ["p1/with space.txt", "real"], target / "p1", overwrite=True)
    assert report.failed == () and report.files == 2
    assert not (target / "p1" / "with space.txt").is_symlink()  # the link was replaced
    assert (target / "p1" / "with space.txt").read_bytes() == b"spaces\n"
    assert (sentinel / "victim").read_bytes() == b"untouched\n"


class PlantingGuestFiles(GuestFiles):
    """Plants a symlink out of DIR in place of a directory the restore has just entered."""

    planted: Path

    def listdir(self, image_id: int, volume: str, path: str) -> list[FileStat]:
        if path == "/real":
            victim = self.planted / "p1" / "real"
            victim.rename(self.planted / "moved-real")
            os.symlink("../../sentinel", victim)
        return super().listdir(image_id, volume, path)


def test_a_symlink_planted_during_the_restore_redirects_nothing(
        hostile_repo: Path, arena: tuple[Path, Path]) -> None:
    target, sentinel = arena
    PlantingGuestFiles.planted = target
    report = restore(hostile_repo, ["p1"], target, guest_cls=PlantingGuestFiles)
    assert report.failed == ()
    assert os.listdir(sentinel) == ["victim"]
    assert (target / "moved-real" / "file.txt").read_bytes() == b"the real file\n"


def test_guest_paths(hostile_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = restore(hostile_repo, ["real/file.txt", "/p1/sub"], out)  # volume left out
    assert sorted(os.listdir(out)) == ["file.txt", "sub"]
    assert [e.path for e in report.skipped] == ["sub/escape"]
    with pytest.raises(NotFound, match="not a directory"):
        restore(hostile_repo, ["p1/dirlink/file.txt"], out)  # never through a symlink
    with pytest.raises(NotFound, match="no volume holds"):
        restore(hostile_repo, ["dirlink/file.txt"], out)
    with pytest.raises(UsageError, match=r"\.\."):
        restore(hostile_repo, ["p1/real/../../etc"], out)


def test_rules() -> None:
    assert symlink_refusal(b"a/b", 0) is None and symlink_refusal(b"../a", 1) is None
    assert symlink_refusal(b"../a", 0) == "symlink target escapes the restore directory"
    assert symlink_refusal(b"./../../a", 1) == "symlink target escapes the restore directory"
    assert symlink_refusal(b"a/../b", 5) == "symlink target has '..' after a name"
    assert symlink_refusal(b"/x", 5) == "absolute symlink target"
    assert symlink_refusal(b"", 5) == "empty symlink target"
    assert unsafe_name(b"..") and unsafe_name(b"a/b") and unsafe_name(b"a\0") and unsafe_name(b"")
    assert unsafe_name(b"\xff\n ok") is None


@pytest.fixture(scope="module")
def two_files_disk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, bytes]:
    base = tmp_path_factory.mktemp("twofiles")
    tree = base / "tree"
    tree.mkdir()
    rnd = random.Random(5)
    a, b = rnd.randbytes(MiB), rnd.randbytes(MiB)
    (tree / "a.bin").write_bytes(a)
    (tree / "b.bin").write_bytes(b)
    image = base / "fs.raw"
    with open(image, "wb") as f:
        f.truncate(16 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image)],
                   check=True, capture_output=True)
    return image, a, b


def test_damage_fails_that_file_and_the_rest_continues(
        make_repo: MakeRepo, two_files_disk: tuple[Path, bytes, bytes], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    image, a, b = two_files_disk
    repo = make_repo()
    backup_image(repo, "vm", {"disk0": image})
    offset = image.read_bytes().find(a[: 64 * 1024])
    assert offset > 0
    with Repository.open(repo) as r:
        damage = corrupt_block(r, r.image(r.backups()[-1], "disk0"), block=offset // BS + 2)
    out = tmp_path / "out"
    rc = main(["restore", "file", "--repo", str(repo), "vm@latest", "disk", "--to", str(out),
               "--json"])
    captured = capsys.readouterr()
    assert rc == 9, captured.err
    doc = json.loads(captured.out)
    assert [f["path"] for f in doc["failed"]] == ["disk/a.bin"]
    assert damage.chunk_hex[:16] in doc["failed"][0]["error"]
    assert "1 entries could not be restored" in captured.err
    assert sorted(os.listdir(out / "disk")) == ["b.bin", "lost+found"]  # no partial a.bin
    assert (out / "disk" / "b.bin").read_bytes() == b


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("image", "volume", "shown"),
                         [("gpt", "windows", "p3"), ("mbr", "xfs", "p1"), ("mbr", "ntfs", "p6")])
def test_ntfs_and_xfs_directories_match_the_manifest(
        guest_images: Mapping[str, GuestImage], tmp_path: Path, image: str, volume: str,
        shown: str, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "repo"
    Repository.init(repo, RepositoryConfig(block_size=BS))
    backup_image(repo, "vm", {"disk0": guest_images[image].path})
    vol = guest_images[image].volume(volume)
    out = tmp_path / "out"
    rc = main(["restore", "file", "--repo", str(repo), "vm@latest", f"{shown}/links",
               f"{shown}/docs", f"{shown}/sparse.img", "--to", str(out), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["failed"] == []
    assert {s["path"] for s in doc["skipped"]} == {"links/abs-passwd", "links/escape"}
    wanted = {rel: f for rel, f in vol.files.items()
              if rel.split("/")[0] in ("links", "docs", "sparse.img")
              and rel not in ("links/abs-passwd", "links/escape")}
    assert {str(p.relative_to(out)) for p in out.rglob("*")} == set(wanted)
    for rel, f in wanted.items():
        p = out / rel
        if f.kind in ("file", "hardlink"):
            assert p.stat().st_size == f.size and sha256(p) == f.sha256, rel
        elif f.kind == "symlink":
            assert os.readlink(p) == f.target, rel
        else:
            assert p.is_dir() and not p.is_symlink(), rel
        if f.mode is not None and f.kind != "symlink":
            assert stat.S_IMODE(p.lstat().st_mode) == f.mode, rel
        if f.mtime is not None:
            assert int(p.lstat().st_mtime) == f.mtime, rel
    sparse = (out / "sparse.img").stat()
    assert sparse.st_blocks * 512 < 1 * MiB < sparse.st_size

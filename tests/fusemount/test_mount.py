"""Real FUSE mounts of real repositories (`vmaccel mount -f` in a subprocess).

Proof for issue 6: qemu-img sees the .vmdk as the source disk, the kernel mounts the ext4 and
XFS partitions inside -flat.vmdk with every file intact, damage is EIO for exactly the damaged
range, `latest` follows new backups made while mounted, and SIGTERM unmounts cleanly.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from testbed.guestimages.model import GuestImage, GuestVolume
from tests.fusemount.conftest import (
    BS,
    Ext4Disk,
    MakeRepo,
    MiB,
    Mounted,
    backup_image,
    force_unmount,
    mounts,
    needs_fuse,
    needs_root,
    wait_for,
)
from tests.fusemount.corrupt import corrupt_block
from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.cli.app import main
from vmaccel.vocabulary.backupref import dir_time

pytestmark = [needs_fuse, pytest.mark.fuse]

MountFn = Callable[..., Mounted]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def backup_dir(mnt: Path, vm: str) -> Path:
    return mnt / vm / os.readlink(mnt / vm / "latest")


@contextlib.contextmanager
def loop_mounted(image: Path, offset: int, where: Path) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(
        ["mount", "-o", f"loop,ro,offset={offset}", str(image), str(where)],
        check=True, capture_output=True,
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False, capture_output=True)
        if str(where) in mounts():
            subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def test_vmdk_is_the_source_disk(make_repo: MakeRepo, mount_repo: MountFn,
                                 ext4_disk: Ext4Disk) -> None:
    repo = make_repo()
    row = backup_image(repo, "web", {"disk0": ext4_disk.image})
    m = mount_repo(repo)
    d = m.path / "web" / dir_time(row.started)
    assert os.readlink(m.path / "web" / "latest") == d.name
    assert sorted(os.listdir(d)) == [
        "disk0-flat.vmdk", "disk0.raw", "disk0.vmdk", "files", "vm.json"]
    assert os.listdir(d / "files") == ["p1"]
    conf = d / "files" / "p1" / "etc" / "nginx" / "nginx.conf"
    assert conf.read_bytes() == (ext4_disk.tree / "etc" / "nginx" / "nginx.conf").read_bytes()
    assert os.readlink(d / "files" / "p1" / "link-to-conf") == "etc/nginx/nginx.conf"
    compare = subprocess.run(["qemu-img", "compare", str(d / "disk0.vmdk"), str(ext4_disk.image)],
                             capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert "Images are identical" in compare.stdout
    info = json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", str(d / "disk0.vmdk")],
        check=True, capture_output=True, text=True).stdout)
    assert info["format"] == "vmdk" and info["virtual-size"] == 64 * MiB
    assert sha256(d / "disk0.raw") == sha256(d / "disk0-flat.vmdk") == sha256(ext4_disk.image)
    doc = json.loads((d / "vm.json").read_text())
    assert doc["vm"] == "web" and doc["backup"]["id"] == row.id
    assert doc["meta"]["config"]["numCPU"] == 2 and doc["disks"][0]["size"] == 64 * MiB
    with pytest.raises(OSError) as e:
        open(d / "disk0.raw", "r+b")  # noqa: SIM115
    assert e.value.errno in (errno.EROFS, errno.EACCES)


@needs_root
def test_loop_mount_of_ext4_inside_flat_vmdk(make_repo: MakeRepo, mount_repo: MountFn,
                                             ext4_disk: Ext4Disk, tmp_path: Path) -> None:
    repo = make_repo()
    backup_image(repo, "web", {"disk0": ext4_disk.image})
    m = mount_repo(repo)
    flat = backup_dir(m.path, "web") / "disk0-flat.vmdk"
    with loop_mounted(flat, ext4_disk.offset, tmp_path / "guest") as guest:
        src = ext4_disk.tree
        expect = sorted(str(p.relative_to(src)) for p in src.rglob("*"))
        got = sorted(str(p.relative_to(guest)) for p in guest.rglob("*") if p.name != "lost+found")
        assert got == expect
        for p in src.rglob("*"):
            q = guest / p.relative_to(src)
            if p.is_symlink():
                assert os.readlink(q) == os.readlink(p)
            elif p.is_file():
                assert sha256(q) == sha256(p), p


@pytest.fixture(scope="session")
def guest_repo(guest_images: Mapping[str, GuestImage],
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("guestrepo") / "repo"
    Repository.init(path, RepositoryConfig(block_size=BS))
    for name, image in guest_images.items():
        backup_image(path, f"{name}-vm", {"disk0": image.path})
    return path


@needs_root
@pytest.mark.parametrize(("image", "volume"), [("gpt", "linux"), ("mbr", "xfs")])
def test_loop_mount_of_guest_image_volumes(guest_repo: Path, guest_images: Mapping[str, GuestImage],
                                           mount_repo: MountFn, tmp_path: Path,
                                           image: str, volume: str) -> None:
    vol = guest_images[image].volume(volume)
    m = mount_repo(guest_repo, "--vm", f"{image}-vm")
    assert os.listdir(m.path) == [f"{image}-vm"]
    flat = backup_dir(m.path, f"{image}-vm") / "disk0-flat.vmdk"
    with loop_mounted(flat, vol.offset, tmp_path / "guest") as guest:
        checked = 0
        for rel, f in vol.files.items():
            p = guest / rel
            if f.kind in ("file", "hardlink"):
                assert p.stat().st_size == f.size, rel
                assert sha256(p) == f.sha256, rel
                checked += 1
            elif f.kind == "symlink":
                assert os.readlink(p) == f.target, rel
            elif f.kind == "dir":
                assert p.is_dir(), rel
        assert checked > 10


def test_damage_is_eio_for_that_range_only(make_repo: MakeRepo, mount_repo: MountFn,
                                           tmp_path: Path) -> None:
    source = tmp_path / "random.raw"
    source.write_bytes(random.Random(3).randbytes(4 * MiB))  # every block unique
    repo = make_repo()
    backup_image(repo, "vm", {"disk0": source})
    with Repository.open(repo) as r:
        img = r.image(r.backups()[-1], "disk0")
        damage = corrupt_block(r, img, block=10)
    m = mount_repo(repo)
    raw = backup_dir(m.path, "vm") / "disk0.raw"
    want = source.read_bytes()
    fd = os.open(raw, os.O_RDONLY)
    try:
        for block in range(4 * MiB // BS):
            for _attempt in range(2):  # a failed read must not leave wrong bytes cached
                if block == damage.block:
                    with pytest.raises(OSError) as e:
                        os.pread(fd, BS, block * BS)
                    assert e.value.errno == errno.EIO
                else:
                    got = os.pread(fd, BS, block * BS)
                    assert got == want[block * BS : (block + 1) * BS], block
        # a read ending just before, and one starting just after, the damaged block work
        assert os.pread(fd, 4096, damage.block * BS - 4096) == want[damage.block * BS - 4096:
                                                                  damage.block * BS]
        after = (damage.block + 1) * BS
        assert os.pread(fd, 4096, after) == want[after : after + 4096]
    finally:
        os.close(fd)
    compare = subprocess.run(["qemu-img", "compare", str(raw.with_suffix(".vmdk")), str(source)],
                             capture_output=True, text=True)
    assert compare.returncode != 0
    assert damage.chunk_hex[:16] in m.output()  # the mount names what is damaged


def test_backups_made_while_mounted_appear(make_repo: MakeRepo, mount_repo: MountFn,
                                           tmp_path: Path) -> None:
    one, two = tmp_path / "one.raw", tmp_path / "two.raw"
    one.write_bytes(b"1" * 256 * 1024)
    two.write_bytes(b"2" * 512 * 1024)
    repo = make_repo()
    first = backup_image(repo, "vm", {"disk0": one})
    m = mount_repo(repo)
    assert sorted(os.listdir(m.path / "vm")) == [dir_time(first.started), "latest"]
    assert (m.path / "vm" / "latest" / "disk0.raw").read_bytes() == one.read_bytes()
    second = backup_image(repo, "vm", {"disk0": two})
    third_vm = backup_image(repo, "newvm", {"disk0": one})
    wait_for(lambda: len(os.listdir(m.path / "vm")) == 3, 10, "the new backup to appear")
    wait_for(lambda: "newvm" in os.listdir(m.path), 10, "the new VM to appear")
    newest = sorted(os.listdir(m.path / "vm"))[-2]  # names sort by time; 'latest' sorts last
    assert os.readlink(m.path / "vm" / "latest") == newest
    with Repository.open(repo) as r:
        assert r.backup(second.id).started >= first.started and third_vm.vm == "newvm"
    assert (m.path / "vm" / newest / "disk0.raw").read_bytes() == two.read_bytes()
    assert (m.path / "vm" / "latest" / "disk0.raw").read_bytes() == two.read_bytes()


def test_sigterm_unmounts_cleanly(make_repo: MakeRepo, mount_repo: MountFn,
                                  tmp_path: Path) -> None:
    disk = tmp_path / "d.raw"
    disk.write_bytes(b"x" * BS)
    repo = make_repo()
    backup_image(repo, "vm", {"disk0": disk})
    m = mount_repo(repo)
    held = open(backup_dir(m.path, "vm") / "disk0.raw", "rb")  # noqa: SIM115 - an open reader
    held.close()
    m.proc.send_signal(signal.SIGTERM)
    assert m.proc.wait(timeout=15) == 0, m.output()
    assert str(m.path) not in mounts()


def test_cli_background_mount_umount_and_filters(make_repo: MakeRepo, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    disk = tmp_path / "d.raw"
    disk.write_bytes(b"y" * BS)
    repo = make_repo()
    backup_image(repo, "a", {"disk0": disk})
    b_row = backup_image(repo, "b", {"disk0": disk})
    backup_image(repo, "b", {"disk0": disk})
    mnt = tmp_path / "bg"
    mnt.mkdir()
    try:
        assert main(["mount", "--repo", str(repo), str(mnt), "--backup", str(b_row.id)]) == 0
        assert "mounted" in capsys.readouterr().out
        assert str(mnt) in mounts()
        assert os.listdir(mnt) == ["b"]
        assert sorted(os.listdir(mnt / "b")) == sorted([dir_time(b_row.started), "latest"])
        assert main(["mount", "--repo", str(repo), str(mnt)]) == 8
        assert "already a mount point" in capsys.readouterr().err
        assert main(["umount", str(mnt)]) == 0
        assert str(mnt) not in mounts()
        assert main(["umount", str(mnt)]) == 8
        assert "is not mounted" in capsys.readouterr().err
        assert main(["mount", "--repo", str(repo), str(mnt), "--vm", "zzz"]) == 7
        assert main(["mount", "--repo", str(repo), str(mnt), "--backup", "a@1999-01-01"]) == 7
    finally:
        force_unmount(mnt)


def test_umount_refuses_foreign_mounts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["umount", "/proc"]) == 8
    assert "not a vmaccel one" in capsys.readouterr().err


def guestfs_volume_name(vol: GuestVolume) -> str:
    if vol.lvm is not None:
        return "-".join(part.replace("-", "--") for part in vol.lvm)
    return f"p{vol.partition}"


@pytest.mark.parametrize(
    ("image", "volume"),
    [("gpt", "esp"), ("gpt", "linux"), ("gpt", "windows"), ("gpt", "lv-data"),
     ("mbr", "xfs"), ("mbr", "fat"), ("mbr", "ntfs")],
)
def test_files_tree_matches_the_guest(guest_repo: Path, guest_images: Mapping[str, GuestImage],
                                      mount_repo: MountFn, image: str, volume: str) -> None:
    """files/<volume>/ shows every guest file (ext4, XFS, NTFS, FAT, LVM) without a loop mount."""
    vol = guest_images[image].volume(volume)
    m = mount_repo(guest_repo, "--vm", f"{image}-vm")
    root = backup_dir(m.path, f"{image}-vm") / "files" / guestfs_volume_name(vol)
    names = {str(p.relative_to(root)) for p in root.rglob("*")}
    assert names == set(vol.files)
    for rel, f in vol.files.items():
        p = root / rel
        st = p.lstat()
        if f.kind in ("file", "hardlink"):
            assert st.st_size == f.size, rel
            assert sha256(p) == f.sha256, rel
        elif f.kind == "symlink":
            assert os.readlink(p) == f.target, rel  # shown as is, never resolved by us
        else:
            assert p.is_dir() and not p.is_symlink(), rel
        if f.mode is not None and f.kind != "symlink":
            assert st.st_mode & 0o055 == f.mode & 0o055, rel  # group/other bits kept
        if f.mtime is not None:
            assert int(st.st_mtime) == f.mtime, rel

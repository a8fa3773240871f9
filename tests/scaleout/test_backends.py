"""The backup, incremental, restore, mount, verify, prune and gc paths on every backend
(issue 15): the local repository (directory + SQLite) and the scaled-out one (S3 +
PostgreSQL, with and without Object Lock), through the command line against the vCenter bed.

Each test takes a fresh bed VM whose disk is an 8 MiB ext4 filesystem holding ``a.txt`` and
a 1 MiB ``data.bin``, backs it up (full), rewrites ``data.bin`` in place as the guest would
(a CBT-tracked write of the blocks that differ), and backs it up again (incremental). The
guest's free space is zero, so even with free-block skipping every image must equal the
disk byte for byte. Rewriting all of ``data.bin`` leaves most of the first backup's pack dead
once that backup is pruned, so gc has a pack to free (or, under Object Lock, to record).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testbed.vsphere.bed import VmInfo, VsphereBed
from tests.fusemount.conftest import Mounted, needs_fuse
from tests.guestfs.imaging import mkfs_ext4, run
from tests.plugin.conftest import Cli
from tests.scaleout.conftest import NewRepo, RepoUnderTest, cli_ok

pytestmark = pytest.mark.vsphere

MiB = 1 << 20
DISK_SIZE = 8 * MiB
FILE_SIZE = 1 * MiB


@dataclass(frozen=True)
class Guest:
    """A VM backed up twice into ``repo``: ``states[i]`` is a copy of the disk's bytes as
    backup ``backups[i]`` froze them (0: full, 1: incremental); ``disk`` the disk's name in
    the repository; ``data`` the content of ``data.bin`` at the incremental."""

    repo: RepoUnderTest
    vm: str
    disk: str
    backups: tuple[int, int]
    states: tuple[Path, Path]
    data: bytes


def _ext4_disk(work: Path) -> Path:
    """A bare 8 MiB ext4 filesystem with ``a.txt`` and ``data.bin``."""
    src = work / "tree"
    src.mkdir()
    (src / "a.txt").write_text("hello from the guest\n")
    (src / "data.bin").write_bytes(random.Random(1).randbytes(FILE_SIZE))
    image = work / "state0.img"
    mkfs_ext4(image, DISK_SIZE, src)
    return image


def _rewrite_file(before: Path, after: Path, name: str, seed: int) -> bytes:
    """Copy ``before`` to ``after`` with the file ``name`` rewritten in place (same blocks,
    new random bytes); returns the new content."""
    shutil.copyfile(before, after)
    block = int(re.findall(r"Block size:\s+(\d+)", run("dumpe2fs", "-h", before))[0])
    blocks = [int(b) for b in run("debugfs", "-R", f"blocks {name}", before).split()]
    data = random.Random(seed).randbytes(len(blocks) * block)
    with after.open("r+b") as f:
        for i, fs_block in enumerate(blocks):
            f.seek(fs_block * block)
            f.write(data[i * block : (i + 1) * block])
    return data


def _backup(cli: Cli, repo: Path, vcenter: str, bed: VsphereBed, vm: str) -> dict[str, Any]:
    """One backup of ``vm`` (file transport); returns its report of the one disk, plus
    ``backup_id``."""
    out = cli_ok(cli, "backup", "--repo", repo, "--vcenter", vcenter, "--vm", vm,
                 "--transport", "file", "--datastore-path",
                 f"LocalDS_0={bed.datastore_dirs['LocalDS_0']}", "--json")  # fmt: skip
    (report,) = json.loads(out)["vms"]
    assert report["ok"], report
    (disk,) = report["disks"]
    return {**disk, "backup_id": int(report["backup_id"])}


@pytest.fixture
def guest(
    backend: NewRepo,
    plugin_bed: VsphereBed,
    fresh_vm: Callable[[], VmInfo],
    vcenter: str,
    cli: Cli,
    tmp_path: Path,
) -> Guest:
    repo, vm = backend("repo"), fresh_vm()
    first = _ext4_disk(tmp_path)
    disk = plugin_bed.control.attach_disk(vm.name, first)
    full = _backup(cli, repo.path, vcenter, plugin_bed, vm.name)
    assert full["mode"] == "full", full
    second = tmp_path / "state1.img"
    data = _rewrite_file(first, second, "data.bin", seed=2)
    written, _ = plugin_bed.control.apply_image(vm.name, disk.key, second)
    assert written >= FILE_SIZE  # every block of the file changed
    incremental = _backup(cli, repo.path, vcenter, plugin_bed, vm.name)
    assert incremental["mode"] == "incremental", incremental
    # the incremental read what the guest wrote (and its metadata), not the disk
    assert FILE_SIZE <= incremental["bytes_read"] < DISK_SIZE // 2, incremental
    return Guest(repo, vm.name, f"disk-{disk.key}",
                 (full["backup_id"], incremental["backup_id"]), (first, second), data)  # fmt: skip


def _restored(cli: Cli, g: Guest, backup_id: int, to: Path) -> bytes:
    cli_ok(cli, "restore", "disk", str(backup_id), g.disk, "--repo", g.repo.path, "--to", to)
    return to.read_bytes()


def test_full_and_incremental_restore_byte_for_byte(guest: Guest, cli: Cli, tmp_path: Path) -> None:
    repo = guest.repo
    assert repo.objects("packs") and len(repo.objects("backups")) == 2
    local = {p.name for p in repo.path.iterdir()}
    if repo.bucket is None:
        assert {"packs", "backups", "index.db"} <= local, local
    else:  # the directory keeps no object and no index: they are in S3 and PostgreSQL
        assert not {"packs", "backups", "index.db"} & local, local
        assert json.loads((repo.path / "catalog.json").read_text())["kind"] == "postgresql"
    for n, (backup_id, state) in enumerate(zip(guest.backups, guest.states, strict=True)):
        restored = _restored(cli, guest, backup_id, tmp_path / f"restored{n}.img")
        assert restored == state.read_bytes(), f"backup {backup_id} differs from the disk"
    assert guest.states[0].read_bytes() != guest.states[1].read_bytes()


@needs_fuse
@pytest.mark.fuse
def test_mount_of_the_incremental_shows_the_disk_and_its_files(
    guest: Guest, mount_repo: Callable[..., Mounted]
) -> None:
    m = mount_repo(guest.repo.path)
    latest = m.path / guest.vm / "latest"
    assert (latest / f"{guest.disk}.raw").read_bytes() == guest.states[1].read_bytes()
    files = latest / "files" / "disk"
    assert (files / "data.bin").read_bytes() == guest.data
    assert (files / "a.txt").read_text() == "hello from the guest\n"


def test_verify_full_passes(guest: Guest, cli: Cli) -> None:
    report = json.loads(cli_ok(cli, "verify", "--repo", guest.repo.path, "--full", "--json"))
    assert report["ok"] is True and report["full"] is True, report
    assert (report["backups"], report["images"]) == (2, 2), report
    assert report["chunks_read"] > 0 and not report["damaged"] and not report["problems"], report


def _uuids(cli: Cli, repo: Path) -> list[str]:
    listed = json.loads(cli_ok(cli, "backups", "list", "--repo", repo, "--json"))
    return [str(b["uuid"]) for b in sorted(listed, key=lambda b: b["id"])]


def test_prune_then_gc_frees_the_first_backup(guest: Guest, cli: Cli, tmp_path: Path) -> None:
    repo = guest.repo
    gone, kept = _uuids(cli, repo.path)
    cli_ok(cli, "prune", "--repo", repo.path, "--keep-last", "1")
    assert _uuids(cli, repo.path) == [kept]
    packs = repo.objects("packs")
    done = json.loads(cli_ok(cli, "gc", "--repo", repo.path, "--grace", "0", "--json"))
    # the rewrite left the first backup's pack mostly dead: repacked, so the old one goes
    freed = done["packs_deleted"] + done["packs_repacked"]
    assert freed >= 1 and done["chunks_deleted"] >= 1, done
    if repo.locked:  # nothing can go yet: gc records the deletes until the lock expires
        assert done["locked_waiting"] >= freed + 1, done  # the packs and the manifest
        assert packs <= repo.objects("packs"), done
        assert repo.objects("backups") == {gone, kept}
    else:
        assert len(packs - repo.objects("packs")) == freed and done["locked_waiting"] == 0
        assert repo.objects("backups") == {kept}
    restored = _restored(cli, guest, guest.backups[1], tmp_path / "kept.img")
    assert restored == guest.states[1].read_bytes()
    cli_ok(cli, "verify", "--repo", repo.path, "--full")


@pytest.mark.parametrize("backend", ["s3+pg+lock"], indirect=True)
def test_gc_under_object_lock_frees_no_bytes_until_the_lock_expires(guest: Guest, cli: Cli) -> None:
    repo = guest.repo
    cli_ok(cli, "prune", "--repo", repo.path, "--keep-last", "1")
    done = json.loads(cli_ok(cli, "gc", "--repo", repo.path, "--grace", "0", "--json"))
    assert done["locked_waiting"] >= 2, done  # the dead pack and the pruned manifest
    assert done["bytes_freed"] == 0, done  # GcReport: "file bytes actually deleted"

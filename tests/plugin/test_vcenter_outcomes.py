"""Documented outcomes of a vCenter backup run, each for that disk or that VM only.

Small raw disks (random blocks in a sparse file, no filesystem: read whole) keep these quick;
images are compared with the VM's disk byte for byte.
"""

from __future__ import annotations

import random
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testbed.vsphere.bed import DiskInfo, VmInfo, VsphereBed
from tests.plugin.conftest import Cli, Result
from tests.plugin.imagecheck import assert_image_equals, complete_backups, images_of
from tests.plugin.vimcheck import cbt_enabled, create_snapshot, leftover_marker, snapshots
from vmaccel.catalog import Repository
from vmaccel.plugin.transport.http import HttpSource
from vmaccel.plugin.transport.nbd import NbdSource
from vmaccel.vocabulary.errors import SnapshotFailed

pytestmark = pytest.mark.vsphere

KiB, MiB = 1 << 10, 1 << 20


def small_disk(path: Path, size: int = 8 * MiB, seed: int = 0) -> Path:
    """A sparse raw disk with random 64 KiB blocks in about a third of it."""
    rng = random.Random(seed)
    with path.open("wb") as f:
        f.truncate(size)
        for block in range(0, size, 64 * KiB):
            if rng.random() < 0.35:
                f.seek(block)
                f.write(rng.randbytes(64 * KiB))
    return path


def run(cli: Cli, repo: Path, vcenter: str, vms: list[str], *extra: str) -> Result:
    args: list[str] = []
    for name in vms:
        args += ["--vm", name]
    return cli("backup", "--repo", repo, "--vcenter", vcenter, *args, "--json", *extra)


def ok_run(cli: Cli, repo: Path, vcenter: str, vms: list[str], *extra: str) -> dict[str, Any]:
    result = run(cli, repo, vcenter, vms, *extra)
    assert result.rc == 0, result.err + result.out
    assert all(v["ok"] for v in result.json["vms"])
    return result.vms


def disks_by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["disk"]: d for d in report["disks"]}


def current_disks(bed: VsphereBed, vm: VmInfo) -> dict[str, DiskInfo]:
    (now,) = [v for v in bed.control.vms() if v.moref == vm.moref]
    return {f"disk-{d.key}": d for d in now.disks}


def assert_latest_equals_disks(bed: VsphereBed, repo: Path, vm: VmInfo) -> None:
    latest = images_of(repo, vm.name)[-1]
    disks = current_disks(bed, vm)
    assert sorted(latest) == sorted(disks)
    for name, disk in disks.items():
        assert_image_equals(repo, latest[name], disk.path)


def ours(bed: VsphereBed, vm: VmInfo) -> list[str]:
    return [n for n in snapshots(bed, vm.moref) if n.startswith("vmaccel-") and n != "vmaccel-like"]


def write(bed: VsphereBed, vm: VmInfo, disk: DiskInfo, offset: int, seed: int) -> None:
    bed.control.guest_write(vm.name, disk.key, offset, random.Random(seed).randbytes(20000))


@pytest.fixture
def attached(
    plugin_bed: VsphereBed, fresh_vm: Callable[[], VmInfo], tmp_path: Path
) -> Callable[[], tuple[VmInfo, DiskInfo]]:
    def make() -> tuple[VmInfo, DiskInfo]:
        vm = fresh_vm()
        image = small_disk(tmp_path / f"{vm.name}.img", seed=hash(vm.name) & 0xFFFF)
        return vm, plugin_bed.control.attach_disk(vm.name, image)

    return make


def test_grown_and_added_disks_are_full_the_others_incremental(
    plugin_bed: VsphereBed,
    attached: Callable[[], tuple[VmInfo, DiskInfo]],
    vcenter: str,
    new_repo: Callable[[str], Path],
    cli: Cli,
    tmp_path: Path,
) -> None:
    bed, repo = plugin_bed, new_repo("repo")
    vm, first = attached()
    second = bed.control.add_disk(vm.name, small_disk(tmp_path / "second.img", 4 * MiB, 9))
    one, two = f"disk-{first.key}", f"disk-{second.key}"
    report = ok_run(cli, repo, vcenter, [vm.name])[vm.name]
    assert {d["disk"]: d["mode"] for d in report["disks"]} == {one: "full", two: "full"}

    write(bed, vm, first, 1 * MiB + 123, 1)
    write(bed, vm, second, 2 * MiB, 2)
    grown = bed.control.grow_disk(vm.name, second.key, 6 * MiB)
    write(bed, vm, grown, 5 * MiB, 3)  # into the new space
    disks = disks_by_name(ok_run(cli, repo, vcenter, [vm.name])[vm.name])
    assert disks[one]["mode"] == "incremental"
    assert disks[two]["mode"] == "full"
    assert f"resized from {4 * MiB} to {6 * MiB}" in disks[two]["reason"]
    assert_latest_equals_disks(bed, repo, vm)

    third = bed.control.add_disk(vm.name, capacity=2 * MiB)
    write(bed, vm, third, 4096, 4)
    write(bed, vm, first, 6 * MiB, 5)
    disks = disks_by_name(ok_run(cli, repo, vcenter, [vm.name])[vm.name])
    assert disks[f"disk-{third.key}"]["mode"] == "full"
    assert "no earlier backup" in disks[f"disk-{third.key}"]["reason"]
    assert disks[one]["mode"] == disks[two]["mode"] == "incremental"
    assert disks[one]["bytes_read"] <= 2 * 64 * KiB  # just the changed blocks
    assert_latest_equals_disks(bed, repo, vm)


def test_cbt_reset_makes_a_full_read(
    plugin_bed: VsphereBed,
    attached: Callable[[], tuple[VmInfo, DiskInfo]],
    vcenter: str,
    new_repo: Callable[[str], Path],
    cli: Cli,
) -> None:
    bed, repo = plugin_bed, new_repo("repo")
    vm, disk = attached()
    ok_run(cli, repo, vcenter, [vm.name])
    write(bed, vm, disk, 3 * MiB, 1)
    bed.control.reset_cbt(vm.name)
    write(bed, vm, disk, 5 * MiB, 2)  # after the reset: only the new tracking knows it
    (d,) = ok_run(cli, repo, vcenter, [vm.name])[vm.name]["disks"]
    assert d["mode"] == "full"
    assert "CBT was reset" in d["reason"]
    assert_latest_equals_disks(bed, repo, vm)
    write(bed, vm, disk, 7 * MiB, 3)
    (d,) = ok_run(cli, repo, vcenter, [vm.name])[vm.name]["disks"]
    assert d["mode"] == "incremental"
    assert_latest_equals_disks(bed, repo, vm)


def test_user_snapshot_while_cbt_is_off(
    plugin_bed: VsphereBed,
    attached: Callable[[], tuple[VmInfo, DiskInfo]],
    vcenter: str,
    new_repo: Callable[[str], Path],
    cli: Cli,
) -> None:
    bed, repo = plugin_bed, new_repo("repo")
    vm, disk = attached()
    create_snapshot(bed, vm.moref, "before-upgrade", "taken by the admin")
    for _ in range(2):
        report = ok_run(cli, repo, vcenter, [vm.name])[vm.name]
        assert any("CBT is off and the VM has snapshots" in w for w in report["warnings"])
        (d,) = report["disks"]
        assert d["mode"] == "full"
        assert d["bytes_read"] == d["size"]  # http has no sparse map: the disk read whole
        assert not cbt_enabled(bed, vm.moref)
        assert snapshots(bed, vm.moref) == {"before-upgrade": "taken by the admin"}
        assert_latest_equals_disks(bed, repo, vm)
        write(bed, vm, disk, 2 * MiB, 7)


def test_leftover_backup_snapshot_is_removed_and_a_lookalike_kept(
    plugin_bed: VsphereBed,
    attached: Callable[[], tuple[VmInfo, DiskInfo]],
    vcenter: str,
    new_repo: Callable[[str], Path],
    cli: Cli,
) -> None:
    bed, repo = plugin_bed, new_repo("repo")
    vm, disk = attached()
    ok_run(cli, repo, vcenter, [vm.name])
    assert cbt_enabled(bed, vm.moref)
    create_snapshot(bed, vm.moref, "vmaccel-0123456789ab", leftover_marker())
    create_snapshot(bed, vm.moref, "vmaccel-like", "my own, named like theirs")
    create_snapshot(bed, vm.moref, "vmaccel-json", '{"vmaccel": 2}')
    write(bed, vm, disk, 4 * MiB, 1)
    report = ok_run(cli, repo, vcenter, [vm.name])[vm.name]
    assert "removed leftover snapshot vmaccel-0123456789ab" in report["warnings"]
    assert snapshots(bed, vm.moref) == {
        "vmaccel-like": "my own, named like theirs",
        "vmaccel-json": '{"vmaccel": 2}',
    }
    (d,) = report["disks"]
    assert d["mode"] == "incremental"
    assert_latest_equals_disks(bed, repo, vm)


def test_quiesce_failure_gives_a_crash_consistent_backup(
    plugin_bed: VsphereBed,
    attached: Callable[[], tuple[VmInfo, DiskInfo]],
    vcenter: str,
    new_repo: Callable[[str], Path],
    cli: Cli,
) -> None:
    bed, repo = plugin_bed, new_repo("repo")
    vm, _ = attached()
    bed.control.inject_fault("quiesce", 1)
    report = ok_run(cli, repo, vcenter, [vm.name])[vm.name]
    assert report["consistency"] == "crash-consistent"
    assert any("quiescing failed" in w for w in report["warnings"])
    assert_latest_equals_disks(bed, repo, vm)
    report = ok_run(cli, repo, vcenter, [vm.name])[vm.name]
    assert report["consistency"] == "application-consistent"
    with Repository.open(repo) as r:
        kinds = [b.meta.consistency for b in r.backups(vm.name)]
    assert kinds == ["crash-consistent", "application-consistent"]
    assert ours(bed, vm) == []


def test_snapshot_failure_fails_only_that_vm(
    plugin_bed: VsphereBed,
    attached: Callable[[], tuple[VmInfo, DiskInfo]],
    vcenter: str,
    new_repo: Callable[[str], Path],
    cli: Cli,
) -> None:
    bed, repo = plugin_bed, new_repo("repo")
    (a, _), (b, _) = attached(), attached()
    bed.control.inject_fault("snapshot", 2)  # the quiesced try and the crash-consistent retry
    # One VM after the other, so both faults meet the first VM's two tries.
    result = run(cli, repo, vcenter, [a.name, b.name], "--parallel", "1")
    # One VM of two failed: the run exits 1 (mixed), the failed VM carries SnapshotFailed's 11.
    assert result.rc == 1, result.err + result.out
    assert result.json["exit_code"] == 1 and result.json["ok"] is False
    failed = [v for v in result.json["vms"] if not v["ok"]]
    good = [v for v in result.json["vms"] if v["ok"]]
    assert len(failed) == 1 and len(good) == 1, result.json
    assert "snapshot" in failed[0]["error"].lower()
    assert failed[0]["backup_id"] is None and failed[0]["disks"] == []
    assert failed[0]["exit_code"] == SnapshotFailed.exit_code == 11
    assert good[0]["exit_code"] == 0 and good[0]["error"] is None
    assert complete_backups(repo, failed[0]["vm"]) == 0
    assert complete_backups(repo, good[0]["vm"]) == 1
    (good_vm,) = [v for v in (a, b) if v.name == good[0]["vm"]]
    assert_latest_equals_disks(bed, repo, good_vm)
    assert ours(bed, a) == ours(bed, b) == []


def test_transport_failure_mid_disk_fails_the_vm_and_removes_the_snapshot(
    plugin_bed: VsphereBed,
    fresh_vm: Callable[[], VmInfo],
    vcenter: str,
    new_repo: Callable[[str], Path],
    cli: Cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bed, repo = plugin_bed, new_repo("repo")
    vm = fresh_vm()
    bed.control.attach_disk(vm.name, small_disk(tmp_path / "big.img", 40 * MiB, 5))
    datastore = bed.datastore_dirs["LocalDS_0"]

    # http: the frozen disk file disappears after the first piece was read.
    http_read = HttpSource.read_into
    pieces: list[int] = []

    def vanishing(self: HttpSource, offset: int, buffer: memoryview) -> None:
        http_read(self, offset, buffer)
        pieces.append(offset)
        if len(pieces) == 1:
            path = urllib.parse.unquote(urllib.parse.urlsplit(self._loc.url).path)
            (datastore / path.removeprefix("/folder/")).unlink()

    with monkeypatch.context() as patch:
        patch.setattr(HttpSource, "read_into", vanishing)
        result = run(cli, repo, vcenter, [vm.name], "--transport", "http", "--no-skip-free")
    assert result.rc != 0 and result.out.startswith("{"), result.err
    (report,) = result.json["vms"]
    assert not report["ok"] and "HTTP read" in report["error"], report
    assert len(pieces) >= 1
    assert complete_backups(repo, vm.name) == 0
    assert ours(bed, vm) == []

    # nbd: the server starts failing reads after the first one.
    trigger = tmp_path / "fail-now"
    command = (
        f"nbdkit -s --exit-with-parent -r --filter=error file {{path}} error-pread=EIO "
        f"error-pread-rate=100% error-pread-file={trigger}"
    )
    nbd_read = NbdSource.read

    def failing(self: NbdSource, offset: int, length: int) -> bytes:
        data = nbd_read(self, offset, length)
        trigger.touch()
        return data

    with monkeypatch.context() as patch:
        patch.setattr(NbdSource, "read", failing)
        result = run(
            cli,
            repo,
            vcenter,
            [vm.name],
            "--transport",
            "nbd",
            "--nbd-command",
            command,
            "--datastore-path",
            f"LocalDS_0={datastore}",
            "--no-skip-free",
        )
    assert result.rc != 0 and result.out.startswith("{"), result.err
    (report,) = result.json["vms"]
    assert not report["ok"] and "NBD read" in report["error"], report
    assert trigger.exists()
    assert complete_backups(repo, vm.name) == 0
    assert ours(bed, vm) == []

    # The next run is a clean full backup.
    (d,) = ok_run(cli, repo, vcenter, [vm.name])[vm.name]["disks"]
    assert d["mode"] == "full"
    assert_latest_equals_disks(bed, repo, vm)


def test_parallel_runs(
    plugin_bed: VsphereBed,
    attached: Callable[[], tuple[VmInfo, DiskInfo]],
    vcenter: str,
    new_repo: Callable[[str], Path],
    cli: Cli,
) -> None:
    bed, repo = plugin_bed, new_repo("repo")
    vms = [attached() for _ in range(3)]
    names = [vm.name for vm, _ in vms]
    for round_ in range(2):
        reports = ok_run(cli, repo, vcenter, names, "--parallel", "2")
        assert sorted(reports) == sorted(names)
        for vm, disk in vms:
            (d,) = reports[vm.name]["disks"]
            assert d["mode"] == ("incremental" if round_ else "full")
            assert_latest_equals_disks(bed, repo, vm)
            write(bed, vm, disk, (round_ + 1) * MiB, hash(vm.name) + round_)

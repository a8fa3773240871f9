"""vCenter and transport faults in the middle of a backup, against the vSphere bed.

Each test injects faults where a real vCenter fails: the session expires (NotAuthenticated)
and the new login may be refused, vCenter is unreachable for a while (a TCP proxy in front of
the bed is cut) or comes back with another certificate, the datastore download or the NBD
server drops mid-disk, QueryChangedDiskAreas faults on page k of its loop.
vmaccel must log in again once, retry with bounded backoff, fail only that VM's backup with a
clear error and exit code, record nothing half-done, and back up correctly on the next run.
After every fault `vmaccel verify --full` is clean and the latest backup reads byte for byte
as the VM's disk (`faultbed.check_after`). Retry windows are shortened to seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from testbed.vsphere.bed import VmInfo, VsphereBed, start_bed
from tests.faults.faultbed import (
    Damage,
    FaultVm,
    MiB,
    backup,
    check_after,
    ok_backup,
    register_vcenter,
    small_disk,
)
from tests.faults.tally import Tally, long_run, record, scale
from tests.faults.tcpproxy import TcpProxy
from tests.plugin.conftest import Cli
from vmaccel.catalog import Repository
from vmaccel.plugin import backoff
from vmaccel.plugin.backoff import Backoff
from vmaccel.plugin.transport.nbd import NbdSource
from vmaccel.plugin.vcenter import cbt, snapshots

pytestmark = pytest.mark.vsphere

PAGES = 8  # 8 MiB disks read through a 1 MiB QueryChangedDiskAreas window
HTTP = ("--transport", "http", "--no-skip-free")  # no V-Ray: every GET is a disk piece


@pytest.fixture(scope="module")
def fault_bed() -> Iterator[VsphereBed]:
    with start_bed(qcda_window=1 * MiB, machines=6) as bed:
        yield bed


@pytest.fixture(scope="module")
def _unused(fault_bed: VsphereBed) -> list[VmInfo]:
    return sorted(fault_bed.control.vms(), key=lambda v: v.name, reverse=True)


@pytest.fixture
def fault_vm(
    fault_bed: VsphereBed, _unused: list[VmInfo], tmp_path: Path
) -> Iterator[Callable[[], FaultVm]]:
    """Hands out bed VMs no test has used, each with an 8 MiB random disk; clears faults."""

    def take() -> FaultVm:
        vm = _unused.pop()
        image = small_disk(tmp_path / f"{vm.name}.img", seed=len(_unused) + 1)
        return FaultVm(fault_bed, vm, fault_bed.control.attach_disk(vm.name, image))

    yield take
    fault_bed.control.clear_faults()


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry windows of seconds, not minutes: the tests wait them out."""
    monkeypatch.setattr(backoff, "VCENTER", Backoff(window=2.0, first=0.2, cap=0.5))
    monkeypatch.setattr(backoff, "TRANSPORT", Backoff(window=3.0, first=0.1, cap=0.5, attempts=3))


@pytest.fixture
def vcenter(cli: Cli, monkeypatch: pytest.MonkeyPatch, fault_bed: VsphereBed) -> str:
    return register_vcenter(cli, monkeypatch, fault_bed, "bed")


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    """This test's count of injected faults, recorded for the bench even when it fails."""
    t = Tally("test_vcenter_faults", "injected_fault", notes=[request.node.name])
    yield t
    record(t)


def settle(t: Tally, damage: Damage) -> None:
    """Count one injected fault and what it broke; the test fails on any damage."""
    t.add(damaged=damage.damaged, lost=damage.lost, wrong=damage.wrong)
    assert damage == Damage(False, False, False), t


def one_vm(result: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the VM's report, its one disk's report) of a one-VM `backup --json`."""
    (vm,) = result.json["vms"]
    (disk,) = vm["disks"]
    return vm, disk


def at_cbt_query(monkeypatch: pytest.MonkeyPatch, action: Callable[[], object]) -> None:
    """Run `action` once, when the next backup asks CBT what changed (snapshot taken)."""
    query, done = cbt.changed_areas, list[object]()

    def hooked(*args: Any, **kwargs: Any) -> Any:
        if not done:
            done.append(action())
        return query(*args, **kwargs)

    monkeypatch.setattr(cbt, "changed_areas", hooked)


# -- 1. session expiry -----------------------------------------------------------------------


def test_expired_session_logs_in_again_and_carries_on(
    fault_bed: VsphereBed,
    fault_vm: Callable[[], FaultVm],
    vcenter: str,
    new_repo: Callable[[str], Path],
    cli: Cli,
    caplog: pytest.LogCaptureFixture,
    tally: Tally,
) -> None:
    repo, vm = new_repo("repo"), fault_vm()
    ok_backup(cli, repo, vcenter, [vm])
    for i, page in enumerate(range(2, 2 + scale(1, PAGES))):
        vm.write((i % 7) * MiB + 4096, seed=i)
        # The session ends at page k of the CBT query: after the snapshot, before any read.
        fault_bed.control.inject_fault(
            "session", 1, method="QueryChangedDiskAreas", after=page % PAGES
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING, "vmaccel.plugin.vcenter.stub"):
            _, disk = one_vm(backup(cli, repo, vcenter, [vm]))
        assert "ended the session (QueryChangedDiskAreas); logging in again" in caplog.text
        assert disk["mode"] == "incremental", disk
        settle(tally, check_after(cli, repo, [vm], {vm.name: 2 + i}))


def test_session_refused_again_fails_only_that_vm(
    fault_bed: VsphereBed,
    fault_vm: Callable[[], FaultVm],
    vcenter: str,
    new_repo: Callable[[str], Path],
    cli: Cli,
    tally: Tally,
) -> None:
    repo, vms = new_repo("repo"), [fault_vm(), fault_vm()]
    ok_backup(cli, repo, vcenter, vms)
    for i, vm in enumerate(vms):
        vm.write(3 * MiB, seed=10 + i)
    # The call fails, the new login works, the call fails again: that VM gives up.
    fault_bed.control.inject_fault("session", 2, method="QueryChangedDiskAreas")
    # One VM after the other, so both faults meet the first VM's call and its retry.
    result = backup(cli, repo, vcenter, vms, "--parallel", "1")
    assert result.rc == 1, result.err
    failed = [v for v in result.json["vms"] if not v["ok"]]
    good = [v for v in result.json["vms"] if v["ok"]]
    assert len(failed) == len(good) == 1, result.json
    assert failed[0]["backup_id"] is None and failed[0]["exit_code"] == 12
    assert "ended the session and refused QueryChangedDiskAreas again" in failed[0]["error"]
    assert "the backup was not recorded" in failed[0]["error"]
    assert [d["mode"] for d in failed[0]["disks"]] == ["failed"]
    assert f"error: {failed[0]['error']}" in backup_text(cli, repo, vcenter, fault_bed, vms)
    counts = {failed[0]["vm"]: 1, good[0]["vm"]: 3}  # the same VM failed in both runs
    settle(tally, check_after(cli, repo, vms, counts, compare=False))
    ok_backup(cli, repo, vcenter, vms)  # the next run backs up both
    assert check_after(cli, repo, vms, {n: c + 1 for n, c in counts.items()}) == Damage(
        False, False, False
    )


def test_new_login_refused_fails_the_vm_with_exit_12(
    fault_bed: VsphereBed,
    fault_vm: Callable[[], FaultVm],
    vcenter: str,
    new_repo: Callable[[str], Path],
    cli: Cli,
    tally: Tally,
) -> None:
    repo, vm = new_repo("repo"), fault_vm()
    ok_backup(cli, repo, vcenter, [vm])
    vm.write(6 * MiB, seed=15)
    # The session ends mid-query and the credentials are refused: the VM fails; the snapshot
    # is still removed (its removal logs in again, and the login then works).
    fault_bed.control.inject_fault("session", 1, method="QueryChangedDiskAreas", after=4)
    fault_bed.control.inject_fault("login", 1, after=1)  # the run's own login works
    result = backup(cli, repo, vcenter, [vm])
    assert result.rc == 12 and result.out.startswith("{"), result.out + result.err
    report, disk = one_vm(result)
    assert "ended the session and refused a new login" in report["error"], report
    assert disk["mode"] == "failed" and report["backup_id"] is None
    settle(tally, check_after(cli, repo, [vm], {vm.name: 1}, compare=False))
    _, disk = one_vm(backup(cli, repo, vcenter, [vm]))
    assert disk["mode"] == "incremental", disk
    assert check_after(cli, repo, [vm], {vm.name: 2}) == Damage(False, False, False)


def test_expired_session_during_a_download_logs_in_again(
    fault_bed: VsphereBed,
    fault_vm: Callable[[], FaultVm],
    vcenter: str,
    new_repo: Callable[[str], Path],
    cli: Cli,
    caplog: pytest.LogCaptureFixture,
    tally: Tally,
) -> None:
    repo, vm = new_repo("repo"), fault_vm()
    # A range read answers 401 (the session expired while no SOAP call was made): one new
    # login, the read is sent again with the new cookie. The HEAD and first GET pass.
    fault_bed.control.inject_fault("session", 1, method="folder", after=2)
    with caplog.at_level(logging.WARNING, "vmaccel.plugin.transport.http"):
        _, disk = one_vm(backup(cli, repo, vcenter, [vm], *HTTP))
    assert "answered 401" in caplog.text and "logging in again" in caplog.text
    assert disk["mode"] == "full" and disk["bytes_read"] == 8 * MiB, disk
    settle(tally, check_after(cli, repo, [vm], {vm.name: 1}))

    # Refused again after the new login: the disk fails with exit 12, nothing is recorded.
    vm.write(2 * MiB, seed=60)
    fault_bed.control.inject_fault("session", 2, method="folder", after=1)
    result = backup(cli, repo, vcenter, [vm], *HTTP)
    assert result.rc == 12, result.out + result.err
    report, disk = one_vm(result)
    assert disk["mode"] == "failed" and report["backup_id"] is None
    assert "answered 401" in disk["error"] and "refused again after a new login" in disk["error"]
    settle(tally, check_after(cli, repo, [vm], {vm.name: 1}, compare=False))
    _, disk = one_vm(backup(cli, repo, vcenter, [vm], *HTTP))
    assert disk["mode"] == "incremental", disk
    assert check_after(cli, repo, [vm], {vm.name: 2}) == Damage(False, False, False)


def backup_text(cli: Cli, repo: Path, vcenter: str, bed: VsphereBed, vms: list[FaultVm]) -> str:
    """The human output of the same failure again (one error line per failed VM)."""
    bed.control.inject_fault("session", 2, method="QueryChangedDiskAreas")
    args: list[str] = []
    for vm in vms:
        args += ["--vm", vm.name]
    result = cli("backup", "--repo", repo, "--vcenter", vcenter, *args, "--parallel", "1")
    assert result.rc == 1
    assert "Traceback" not in result.err
    return " ".join(result.err.split())


# -- 2. vCenter unreachable ------------------------------------------------------------------


def test_unreachable_vcenter_is_waited_out_then_fails_clearly(
    fault_bed: VsphereBed,
    fault_vm: Callable[[], FaultVm],
    new_repo: Callable[[str], Path],
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    tally: Tally,
) -> None:
    port = urlsplit(fault_bed.url).port
    assert port is not None
    # Disk bytes through the file transport: only the SOAP calls cross the proxy.
    local = ("--transport", "file", "--datastore-path", f"LocalDS_0={fault_bed.datastore_dir}")
    with TcpProxy(port) as proxy:
        vcenter = register_vcenter(cli, monkeypatch, fault_bed, "proxied", proxy.port)
        repo, vm = new_repo("repo"), fault_vm()
        ok_backup(cli, repo, vcenter, [vm], *local)

        # Gone for 1 s of a 2 s window, just after the snapshot: the calls are retried.
        vm.write(5 * MiB, seed=1)
        with monkeypatch.context() as patch:
            at_cbt_query(patch, lambda: proxy.down_for(1.0))
            report, disk = one_vm(backup(cli, repo, vcenter, [vm], *local))
        assert report["ok"] and disk["mode"] == "incremental", report
        settle(tally, check_after(cli, repo, [vm], {vm.name: 2}))

        # Gone for longer than the window: the VM fails with exit 11; the snapshot stays.
        vm.write(6 * MiB, seed=2)
        with monkeypatch.context() as patch:
            at_cbt_query(patch, proxy.down)
            result = backup(cli, repo, vcenter, [vm], *local)
        assert result.rc == 11, result.out + result.err
        report, disk = one_vm(result)
        assert "did not answer QueryChangedDiskAreas (retried for up to 2 s)" in report["error"]
        assert disk["mode"] == "failed" and report["backup_id"] is None
        assert any("the next run removes the leftover snapshot" in w for w in report["warnings"])
        proxy.up()
        assert len(vm.our_snapshots()) == 1

        report = ok_backup(cli, repo, vcenter, [vm], *local)[vm.name]
        assert any(w.startswith("removed leftover snapshot vmaccel-") for w in report["warnings"])
        settle(tally, check_after(cli, repo, [vm], {vm.name: 3}))

        # Gone after the commit, when the snapshot is removed: the backup stands, with a warning.
        vm.write(7 * MiB, seed=3)
        with monkeypatch.context() as patch:
            remove = snapshots.remove

            def cut_then_remove(*args: Any, **kwargs: Any) -> None:
                proxy.down()
                remove(*args, **kwargs)

            patch.setattr(snapshots, "remove", cut_then_remove)
            report = ok_backup(cli, repo, vcenter, [vm], *local)[vm.name]
        assert any("the next run removes the leftover snapshot" in w for w in report["warnings"])
        proxy.up()
        assert len(vm.our_snapshots()) == 1
        report = ok_backup(cli, repo, vcenter, [vm], *local)[vm.name]
        assert any(w.startswith("removed leftover snapshot vmaccel-") for w in report["warnings"])
        settle(tally, check_after(cli, repo, [vm], {vm.name: 5}))


def test_another_certificate_after_a_reconnect_fails_with_exit_13(
    fault_bed: VsphereBed,
    fault_vm: Callable[[], FaultVm],
    new_repo: Callable[[str], Path],
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    tally: Tally,
) -> None:
    port = urlsplit(fault_bed.url).port
    assert port is not None
    local = ("--transport", "file", "--datastore-path", f"LocalDS_0={fault_bed.datastore_dir}")
    with TcpProxy(port) as proxy, start_bed(machines=1) as impostor:
        vcenter = register_vcenter(cli, monkeypatch, fault_bed, "proxied", proxy.port)
        repo, vm = new_repo("repo"), fault_vm()
        ok_backup(cli, repo, vcenter, [vm], *local)
        vm.write(1 * MiB, seed=3)

        def swap() -> None:  # the connection drops; the address now answers with another cert
            proxy.down()
            proxy.target_port = int(urlsplit(impostor.url).port or 0)
            proxy.up()

        with monkeypatch.context() as patch:
            at_cbt_query(patch, swap)
            result = backup(cli, repo, vcenter, [vm], *local)
        assert result.rc == 13 and result.out, result.out + result.err
        report, disk = one_vm(result)
        assert "does not match the pinned thumbprint" in report["error"], report
        assert disk["mode"] == "failed" and report["backup_id"] is None
        proxy.target_port = port
        report = ok_backup(cli, repo, vcenter, [vm], *local)[vm.name]
        assert any(w.startswith("removed leftover snapshot vmaccel-") for w in report["warnings"])
        settle(tally, check_after(cli, repo, [vm], {vm.name: 2}))


# -- 3. transport dropped mid-disk -----------------------------------------------------------


def test_http_download_cut_mid_disk_is_retried_then_fails_the_disk(
    fault_bed: VsphereBed,
    fault_vm: Callable[[], FaultVm],
    vcenter: str,
    new_repo: Callable[[str], Path],
    cli: Cli,
    tally: Tally,
) -> None:
    repo, vm = new_repo("repo"), fault_vm()
    # The second 4 MiB piece is cut after 100 kB, once: sent again, the backup succeeds.
    fault_bed.control.inject_fault("folder", 1, after=1, cut_bytes=100_000)
    _, disk = one_vm(backup(cli, repo, vcenter, [vm], *HTTP))
    assert disk["mode"] == "full" and disk["bytes_read"] == 8 * MiB, disk
    settle(tally, check_after(cli, repo, [vm], {vm.name: 1}))

    # Cut every time: the disk fails after its retries and nothing of the run is recorded.
    for i, cut in enumerate([100_000, 0, 4 * MiB - 1, 1][: scale(1, 4)]):
        vm.write(i * MiB, seed=20 + i, length=3 * MiB)
        fault_bed.control.inject_fault("folder", -1, cut_bytes=cut)
        result = backup(cli, repo, vcenter, [vm], *HTTP)
        fault_bed.control.clear_faults()
        assert result.rc == 10, result.out + result.err
        report, disk = one_vm(result)
        assert disk["mode"] == "failed" and "gave up after retrying" in disk["error"], disk
        assert report["error"].startswith(f"{disk['disk']}: HTTP read of ")
        settle(tally, check_after(cli, repo, [vm], {vm.name: 1}, compare=False))

    _, disk = one_vm(backup(cli, repo, vcenter, [vm], *HTTP))  # the next run: incremental
    assert disk["mode"] == "incremental", disk
    assert check_after(cli, repo, [vm], {vm.name: 2}) == Damage(False, False, False)


def test_nbd_server_killed_mid_disk_reconnects_then_fails_the_disk(
    fault_bed: VsphereBed,
    fault_vm: Callable[[], FaultVm],
    vcenter: str,
    new_repo: Callable[[str], Path],
    cli: Cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tally: Tally,
) -> None:
    repo, vm = new_repo("repo"), fault_vm()
    pidfile = tmp_path / "nbdkit.pid"
    nbd = (
        "--transport", "nbd", "--no-skip-free",
        "--nbd-command", f"nbdkit -s --exit-with-parent -r -P {pidfile} file {{path}}",
        "--datastore-path", f"LocalDS_0={fault_bed.datastore_dir}",
    )  # fmt: skip
    kills: list[int] = []
    pread = NbdSource._pread

    def killing(every: bool) -> Callable[..., bytes]:
        def read(self: NbdSource, handle: Any, offset: int, length: int) -> bytes:
            if every or not kills:  # kill -9 the server this read is about to use
                pid = int(pidfile.read_text())
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                kills.append(pid)
            return pread(self, handle, offset, length)

        return read

    with monkeypatch.context() as patch:
        patch.setattr(NbdSource, "_pread", killing(every=False))
        _, disk = one_vm(backup(cli, repo, vcenter, [vm], *nbd))
    assert len(kills) == 1 and disk["mode"] == "full", disk
    settle(tally, check_after(cli, repo, [vm], {vm.name: 1}))

    vm.write(2 * MiB, seed=30)
    with monkeypatch.context() as patch:
        patch.setattr(NbdSource, "_pread", killing(every=True))
        result = backup(cli, repo, vcenter, [vm], *nbd)
    assert result.rc == 10, result.out + result.err
    _, disk = one_vm(result)
    assert disk["mode"] == "failed" and "gave up after reconnecting" in disk["error"], disk
    assert len(set(kills)) == 1 + 4  # the first try and three reconnects, each a new server
    settle(tally, check_after(cli, repo, [vm], {vm.name: 1}, compare=False))

    _, disk = one_vm(backup(cli, repo, vcenter, [vm], *nbd))
    assert disk["mode"] == "incremental", disk
    assert check_after(cli, repo, [vm], {vm.name: 2}) == Damage(False, False, False)


# -- 4. CBT faults on any page ---------------------------------------------------------------


def test_cbt_fault_on_any_page_makes_that_disk_a_full_read(
    fault_bed: VsphereBed,
    fault_vm: Callable[[], FaultVm],
    vcenter: str,
    new_repo: Callable[[str], Path],
    cli: Cli,
    tally: Tally,
) -> None:
    repo, vm = new_repo("repo"), fault_vm()
    ok_backup(cli, repo, vcenter, [vm])
    pages = list(range(PAGES)) if long_run() else [3, PAGES - 1]
    for i, page in enumerate(pages):
        vm.write(page * MiB + 512, seed=40 + i)
        fault_bed.control.inject_fault("qcda", 1, after=page)
        _, disk = one_vm(backup(cli, repo, vcenter, [vm]))
        assert disk["mode"] == "full", disk
        assert "CBT query failed (QueryChangedDiskAreas refused changeId" in disk["reason"]
        assert f"at {page * MiB}: " in disk["reason"] and "SystemError" in disk["reason"]
        settle(tally, check_after(cli, repo, [vm], {vm.name: 2 + i}))
    vm.write(0, seed=49)
    _, disk = one_vm(backup(cli, repo, vcenter, [vm]))  # CBT trusted again on the next run
    assert disk["mode"] == "incremental", disk
    with Repository.open(repo) as r:
        assert len(r.backups(vm.name)) == 1 + len(pages) + 1

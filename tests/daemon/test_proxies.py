"""Backup proxies (`vmaccel worker`) on a PostgreSQL catalog, against the vCenter bed: real
worker processes claim the VM jobs a policy run queues, the per-datastore snapshot limit
holds across them (what vSphere shows), a proxy killed with -9 mid-disk has its job taken
over by another (its snapshot removed first) and `verify --full` passes, a run cancelled
while its VMs wait in the queue ends without backing them up.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from testbed.vsphere.bed import VmInfo, VsphereBed, start_bed
from tests.catalog.pgserver import pg, postgres
from tests.daemon.proxyfleet import Proxies, proxies, repo
from tests.daemon.servebed import (
    assert_snapshot_limit,
    ctx_for,
    finished_runs,
    serve,
    slow_disk,
    snapshot_seq,
    vmaccel_snapshots,
    wait_for,
)
from tests.plugin.conftest import PASSWORD_ENV, Cli, cli, config_dir
from tests.plugin.test_vcenter_outcomes import MiB, small_disk
from vmaccel.daemon.runner import Runner
from vmaccel.service.jobs import JobDetail, job_log, owner_id, show_job
from vmaccel.service.policies import add_policy, get_policy, run_policy_now
from vmaccel.service.policyspec import Policy

__all__ = ["cli", "config_dir", "pg", "postgres", "proxies", "repo"]
pytestmark = pytest.mark.vsphere
VC = "bed"


@pytest.fixture(scope="module")
def bed() -> Iterator[VsphereBed]:
    with start_bed(machines=8) as b:  # 16 VMs on two hosts, every disk on LocalDS_0
        yield b


@pytest.fixture
def fleet(bed: VsphereBed, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> list[VmInfo]:
    """The bed registered as vCenter "bed"; its VMs, each a fresh one per test."""
    monkeypatch.setenv(PASSWORD_ENV, bed.password)
    result = cli(
        "vcenter",
        "add",
        VC,
        "--url",
        bed.url,
        "--user",
        bed.user,
        "--password-env",
        PASSWORD_ENV,
        "--thumbprint",
        bed.thumbprint_sha256,
    )
    assert result.rc == 0, result.err
    return [vm for vm in sorted(bed.control.vms(), key=lambda v: v.name)
            if not vmaccel_snapshots(bed).get(vm.name)]  # fmt: skip


def _policy(name: str, vms: list[VmInfo], parallel: int) -> Policy:
    return Policy.from_dict({
        "name": name, "vcenter": VC, "schedule": "0 0 1 1 *", "quiesce": False,
        "vm_patterns": [v.name for v in vms], "parallel": parallel, "retries": 0,
        "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0,
    })  # fmt: skip


def _with_disks(bed: VsphereBed, vms: list[VmInfo], tmp: Path, size: int) -> None:
    for i, vm in enumerate(vms):
        bed.control.attach_disk(vm.name, small_disk(tmp / f"{vm.name}.img", size, seed=i))


def _run(repo: Path, policy: Policy, url: str) -> JobDetail:
    """Queue and run ``policy`` as the daemon's worker does on a PostgreSQL catalog."""
    ctx = ctx_for(repo)
    add_policy(ctx, policy)
    job = run_policy_now(ctx, policy.name)
    Runner(ctx, owner_id(), threading.Event(), queue=url).run(
        get_policy(ctx, policy.name).policy, job.id
    )
    return show_job(ctx, job.id)


def _catalog(repo: Path) -> str:
    from vmaccel.catalog.catalogdb import catalog_url

    url = catalog_url(repo)
    assert url is not None
    return url


def test_three_proxies_share_twelve_vms_within_the_datastore_limit(
    bed: VsphereBed, fleet: list[VmInfo], repo: Path, proxies: Proxies, tmp_path: Path
) -> None:
    vms = fleet[:12]
    _with_disks(bed, vms, tmp_path, 8 * MiB)
    for name in ("p1", "p2", "p3"):
        proxies.start(name, "--max-jobs", "2", "--max-per-datastore", "2")
    since = snapshot_seq(bed)
    detail = _run(repo, _policy("fleet", vms, parallel=12), _catalog(repo))
    assert detail.job.state in ("succeeded", "warning"), detail.job.summary
    assert sorted(v.vm for v in detail.vms) == sorted(v.name for v in vms)
    assert all(v.backup_id is not None and v.attempt == 1 for v in detail.vms)
    # One datastore, two snapshots open at most at any moment, whoever holds them.
    most = assert_snapshot_limit(bed, since, [v.name for v in vms], limit=2)
    assert list(most) == ["LocalDS_0"]
    ran_on = {line.message.rsplit(" on ", 1)[1] for line in job_log(ctx_for(repo), detail.job.id)
              if ": attempt 1 on " in line.message}  # fmt: skip
    assert len(ran_on) >= 2, ran_on  # the queue spread the VMs over the proxies
    assert not vmaccel_snapshots(bed)


def test_a_proxy_killed_mid_disk_has_its_job_taken_over(
    bed: VsphereBed, fleet: list[VmInfo], repo: Path, proxies: Proxies, tmp_path: Path,
    cli: Cli,
) -> None:  # fmt: skip
    (vm,) = fleet[:1]
    bed.control.attach_disk(vm.name, slow_disk(tmp_path / f"{vm.name}.img", 0))
    first = proxies.start("doomed", "--max-jobs", "1")
    outcome: list[JobDetail] = []
    run = threading.Thread(target=lambda: outcome.append(
        _run(repo, _policy("crash", [vm], parallel=1), _catalog(repo))))  # fmt: skip
    run.start()
    wait_for("the VM's backup snapshot", lambda: vmaccel_snapshots(bed).get(vm.name), 120)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert vmaccel_snapshots(bed).get(vm.name)  # left behind by the killed proxy
    proxies.start("heir", "--max-jobs", "1")
    run.join(300)
    assert not run.is_alive()
    (vm_job,) = outcome[0].vms
    assert vm_job.state in ("succeeded", "warning") and vm_job.attempt == 1, vm_job
    log = [line.message for line in job_log(ctx_for(repo), outcome[0].job.id)]
    assert any("stopped answering" in m and "heir" in m for m in log), log
    assert any(m.endswith("attempt 1 on heir") for m in log), log
    assert not vmaccel_snapshots(bed).get(vm.name)
    verified = cli("verify", "--repo", repo, "--full")
    assert verified.rc == 0, verified.out + verified.err


def test_a_cancelled_run_leaves_its_queued_vms_unstarted(
    bed: VsphereBed, fleet: list[VmInfo], repo: Path, tmp_path: Path
) -> None:
    """No proxy runs: the VMs wait in the queue; a cancel ends them interrupted, unstarted."""
    from vmaccel.service.jobs import cancel_job

    vms = fleet[:2]
    _with_disks(bed, vms, tmp_path, 8 * MiB)
    ctx = ctx_for(repo)
    threading.Timer(3.0, lambda: cancel_job(ctx, _active(repo))).start()
    detail = _run(repo, _policy("waiting", vms, parallel=2), _catalog(repo))
    assert detail.job.state == "cancelled"
    assert all(v.backup_id is None for v in detail.vms)
    assert not vmaccel_snapshots(bed)


def _active(repo: Path) -> int:
    from vmaccel.service.jobs import list_jobs

    return next(j.id for j in list_jobs(ctx_for(repo), "waiting", limit=5) if j.finished is None)


def test_serve_queues_scheduled_runs_for_the_proxies_of_their_datastores(
    bed: VsphereBed, fleet: list[VmInfo], repo: Path, proxies: Proxies, tmp_path: Path
) -> None:
    (vm,) = fleet[:1]
    _with_disks(bed, [vm], tmp_path, 8 * MiB)
    policy = _policy("served", [vm], parallel=1)
    add_policy(ctx_for(repo), Policy.from_dict({**policy.to_dict(), "schedule": "*/2 * * * * *"}))
    proxies.start("elsewhere", "--datastores", "OtherDS")  # never sees LocalDS_0's queue
    proxies.start("near", "--datastores", "LocalDS_0")
    with serve(repo, tmp_path / "serve.log"):
        runs = wait_for(
            "a scheduled run that backed the VM up",
            lambda: [r for r in finished_runs(repo, "served") if r.vms and r.vms[0].backup_id],
            120,
        )
    log = [line.message for line in job_log(ctx_for(repo), runs[0].job.id)]
    assert any(m.endswith("attempt 1 on near") for m in log), log
    assert not any(" on elsewhere" in m for m in log), log


def test_vms_no_proxy_took_before_the_window_closed_fail_unstarted(
    bed: VsphereBed, fleet: list[VmInfo], repo: Path, tmp_path: Path
) -> None:
    """No proxy runs; the window (09:00-10:00 UTC on the run's clock) closes 2 s into the run."""
    vms = fleet[:2]
    _with_disks(bed, vms, tmp_path, 8 * MiB)
    ctx = ctx_for(repo)
    policy = Policy.from_dict({**_policy("windowed", vms, parallel=2).to_dict(),
                               "window": "09:00-10:00", "timezone": "UTC"})  # fmt: skip
    add_policy(ctx, policy)
    job = run_policy_now(ctx, policy.name)
    opened = datetime(2026, 12, 4, 9, 59, tzinfo=UTC).timestamp()
    start = time.monotonic()
    runner = Runner(ctx, owner_id(), threading.Event(), queue=_catalog(repo),
                    clock=lambda: opened + (time.monotonic() - start) * 60)  # fmt: skip
    runner.run(get_policy(ctx, policy.name).policy, job.id)
    detail = show_job(ctx, job.id)
    assert [v.state for v in detail.vms] == ["failed", "failed"], detail.vms
    assert all("window closed" in (v.error or "") for v in detail.vms)
    assert all(v.backup_id is None for v in detail.vms)


def test_a_proxy_needs_a_postgresql_catalog(cli: Cli, tmp_path: Path) -> None:
    local = tmp_path / "local"
    cli("repo", "init", "--repo", local)
    refused = cli("worker", "--repo", local)
    assert refused.rc == 2 and "catalog is on PostgreSQL" in refused.err, refused.err
    bad = cli("worker", "--repo", local, "--heartbeat", "5", "--stalled-after", "6")
    assert bad.rc == 2 and "--stalled-after" in bad.err and "Traceback" not in bad.err

"""`vmaccel serve` and policy runs against the vCenter bed, with schedules of a few seconds:
tags drive what is backed up, failed VMs are retried (and "succeeded after retry"), the
window holds, the per-datastore snapshot limit holds, a daemon killed with -9 mid-run
recovers (job interrupted, snapshot removed, the next run succeeds), a second daemon refuses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from testbed.vsphere.bed import VmInfo, VsphereBed
from tests.daemon.notifybed import PASSWORD, USER, http_receiver, make_cert, smtp_server
from tests.daemon.servebed import (
    VMACCEL,
    assert_snapshot_limit,
    ctx_for,
    finished_runs,
    serve,
    slow_disk,
    snapshot_seq,
    untag,
    vmaccel_snapshots,
    wait_for,
)
from tests.plugin.conftest import (
    Cli,
    Tagger,
    _fresh_vms,
    cli,
    config_dir,
    fresh_vm,
    new_repo,
    plugin_bed,
    tagger,
    vcenter,
)
from tests.plugin.test_vcenter_outcomes import MiB, small_disk
from vmaccel.daemon.runner import Runner
from vmaccel.service.jobs import owner_id, show_job
from vmaccel.service.policies import add_policy, get_policy, run_policy_now
from vmaccel.service.policyrun import Limits
from vmaccel.service.policyspec import Policy

__all__ = [  # fixtures of the plugin tests' bed
    "_fresh_vms", "cli", "config_dir", "fresh_vm", "new_repo", "plugin_bed", "tagger", "vcenter",
]  # fmt: skip
pytestmark = pytest.mark.vsphere
FAST = "*/2 * * * * *"  # every 2 seconds (cron with a seconds field)


def _policy(name: str, vc: str, **fields: object) -> Policy:
    base: dict[str, object] = {
        "name": name, "vcenter": vc, "schedule": FAST, "quiesce": False,
        "retry_delay": 0.2, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0,
    }  # fmt: skip
    return Policy.from_dict({**base, **fields})


def _with_disk(bed: VsphereBed, vm: VmInfo, tmp: Path, seed: int, size: int = 8 * MiB) -> VmInfo:
    bed.control.attach_disk(vm.name, small_disk(tmp / f"disk{seed}", size, seed=seed))
    return vm


def _run_now(repo: Path, name: str, limits: Limits | None = None) -> int:
    """Run a policy in this process, as `vmaccel policy run` does; returns the job id."""
    ctx = ctx_for(repo)
    job = run_policy_now(ctx, name)
    Runner(ctx, owner_id(), threading.Event(), limits).run(get_policy(ctx, name).policy, job.id)
    return job.id


def test_tagging_drives_the_daemon(
    plugin_bed: VsphereBed, fresh_vm: Callable[[], VmInfo], vcenter: str, tagger: Tagger,
    new_repo: Callable[[str], Path], tmp_path: Path,
) -> None:  # fmt: skip
    repo = new_repo("repo")
    vm = _with_disk(plugin_bed, fresh_vm(), tmp_path, 1)
    add_policy(ctx_for(repo), _policy("gold", vcenter, tags=["backup:gold-serve"]))
    tagger.tag(vm.moref, "gold-serve")
    with serve(repo, tmp_path / "serve.log"):
        # Tagged: the next run (within one schedule period) backs the VM up.
        first = wait_for("a run with the tagged VM", lambda: [
            r for r in finished_runs(repo, "gold") if r.vms and r.vms[0].backup_id])  # fmt: skip
        (vm_job,) = first[0].vms
        assert vm_job.vm == vm.name and vm_job.state in ("succeeded", "warning")
        assert {d.mode for d in vm_job.disks} == {"full"}
        # Untagged: runs go on and select nothing.
        untag(tagger, vm.moref, "gold-serve")
        seen = len(finished_runs(repo, "gold"))
        empty = wait_for("a run after untagging that selects no VM", lambda: [
            r for r in finished_runs(repo, "gold")[seen + 1:] if not r.vms])  # fmt: skip
        assert empty[0].job.state == "succeeded"
    assert not vmaccel_snapshots(plugin_bed).get(vm.name)


def test_retries_then_fails_or_succeeds_after_retry(
    plugin_bed: VsphereBed, fresh_vm: Callable[[], VmInfo], vcenter: str,
    new_repo: Callable[[str], Path], tmp_path: Path,
) -> None:  # fmt: skip
    repo = new_repo("repo")
    vm = _with_disk(plugin_bed, fresh_vm(), tmp_path, 2)
    add_policy(ctx_for(repo), _policy("retry", vcenter, vm_patterns=[vm.name], retries=2))
    plugin_bed.control.inject_fault("snapshot", count=1)  # the first attempt fails
    detail = show_job(ctx_for(repo), _run_now(repo, "retry"))
    (v,) = detail.vms
    assert v.attempt == 2 and v.backup_id is not None
    assert v.outcome in ("succeeded after retry", "warning after retry")
    assert detail.job.state == "warning"  # a retried VM is reported, not hidden

    plugin_bed.control.inject_fault("snapshot", count=-1)  # every attempt fails
    detail = show_job(ctx_for(repo), _run_now(repo, "retry"))
    (v,) = detail.vms
    assert (v.state, v.attempt, v.backup_id) == ("failed", 3, None)
    assert "snapshot" in (v.error or "").lower()
    assert detail.job.state == "failed" and detail.job.summary["failed"] == {vm.name: v.error}


def test_the_window_is_respected(
    plugin_bed: VsphereBed, fresh_vm: Callable[[], VmInfo], vcenter: str,
    new_repo: Callable[[str], Path], tmp_path: Path,
) -> None:  # fmt: skip
    repo = new_repo("repo")
    vm = _with_disk(plugin_bed, fresh_vm(), tmp_path, 3)
    now = datetime.now(UTC)
    closed = f"{(now + timedelta(hours=1)):%H:%M}-{(now + timedelta(hours=2)):%H:%M}"
    add_policy(ctx_for(repo), _policy("night", vcenter, vm_patterns=[vm.name], window=closed))
    detail = show_job(ctx_for(repo), _run_now(repo, "night"))
    (v,) = detail.vms
    assert (v.state, v.attempt, v.backup_id) == ("failed", 0, None)  # never started
    assert detail.job.state == "failed"
    # Open now but closing in 20 s: a failed VM is not retried after the window.
    open_ = f"{(now - timedelta(minutes=1)):%H:%M:%S}-{(now + timedelta(seconds=20)):%H:%M:%S}"
    add_policy(ctx_for(repo), _policy("short", vcenter, vm_patterns=[vm.name], window=open_,
                                      retries=5, retry_delay=60))  # fmt: skip
    plugin_bed.control.inject_fault("snapshot", count=-1)
    (v,) = show_job(ctx_for(repo), _run_now(repo, "short")).vms
    assert (v.state, v.attempt) == ("failed", 1)


def test_the_datastore_limit_holds_across_the_run(
    plugin_bed: VsphereBed, fresh_vm: Callable[[], VmInfo], vcenter: str,
    new_repo: Callable[[str], Path], tmp_path: Path,
) -> None:  # fmt: skip
    repo = new_repo("repo")
    vms = [_with_disk(plugin_bed, fresh_vm(), tmp_path, 10 + i, 24 * MiB) for i in range(3)]
    add_policy(ctx_for(repo), _policy("wide", vcenter, vm_patterns=[v.name for v in vms],
                                      parallel=3))  # fmt: skip
    since = snapshot_seq(plugin_bed)
    detail = show_job(ctx_for(repo), _run_now(repo, "wide", Limits(per_datastore=1)))
    assert [v.state in ("succeeded", "warning") for v in detail.vms] == [True] * 3
    # All three share LocalDS_0: one open backup snapshot at any moment.
    most = assert_snapshot_limit(plugin_bed, since, [v.name for v in vms], limit=1)
    assert most == {"LocalDS_0": 1}


def test_kill_minus_nine_mid_run_then_restart(
    plugin_bed: VsphereBed, fresh_vm: Callable[[], VmInfo], vcenter: str,
    new_repo: Callable[[str], Path], tmp_path: Path,
) -> None:  # fmt: skip
    repo, vm = new_repo("repo"), fresh_vm()
    plugin_bed.control.attach_disk(vm.name, slow_disk(tmp_path / "disk4", 4))
    add_policy(ctx_for(repo), _policy("crash", vcenter, vm_patterns=[vm.name]))
    log = tmp_path / "serve.log"
    with serve(repo, log) as proc:
        wait_for("the VM's backup snapshot", lambda: vmaccel_snapshots(plugin_bed).get(vm.name),
                 timeout=120)  # fmt: skip
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert vmaccel_snapshots(plugin_bed).get(vm.name)  # left behind by the killed daemon
    with serve(repo, log):
        runs = wait_for("a successful run after the restart", lambda: [
            r for r in finished_runs(repo, "crash")
            if r.job.state in ("succeeded", "warning")], timeout=120)  # fmt: skip
    killed = finished_runs(repo, "crash")[0]
    assert killed.job.state == "interrupted" and killed.vms[0].state == "interrupted"
    assert runs[0].vms[0].backup_id is not None
    assert not vmaccel_snapshots(plugin_bed).get(vm.name)


def test_a_second_daemon_refuses(new_repo: Callable[[str], Path], tmp_path: Path) -> None:
    repo = new_repo("repo")
    with serve(repo, tmp_path / "first.log") as first:
        wait_for("the first daemon", lambda: (tmp_path / "first.log").read_text().count("serving"))
        second = subprocess.run(
            [str(VMACCEL), "serve", "--repo", str(repo), "--no-api"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 4  # RepositoryLocked
        assert "another vmaccel daemon" in second.stderr
        assert f":{first.pid})" in second.stderr  # it names the one that serves
    assert first.returncode == 0  # the first stopped cleanly on SIGTERM


def test_sigterm_aborts_after_the_stop_timeout_and_cleans_up(
    plugin_bed: VsphereBed, fresh_vm: Callable[[], VmInfo], vcenter: str,
    new_repo: Callable[[str], Path], tmp_path: Path,
) -> None:  # fmt: skip
    repo, vm = new_repo("repo"), fresh_vm()
    plugin_bed.control.attach_disk(vm.name, slow_disk(tmp_path / "disk5", 5))
    add_policy(ctx_for(repo), _policy("term", vcenter, vm_patterns=[vm.name]))
    with serve(repo, tmp_path / "serve.log", "--stop-timeout", "0") as proc:
        wait_for("the VM's backup snapshot", lambda: vmaccel_snapshots(plugin_bed).get(vm.name),
                 timeout=120)  # fmt: skip
        proc.terminate()
        assert proc.wait(60) == 0
    (run,) = finished_runs(repo, "term")
    assert run.job.state == "interrupted"
    (v,) = run.vms
    assert (v.state, v.backup_id) == ("interrupted", None)
    assert not vmaccel_snapshots(plugin_bed).get(vm.name)  # removed on the way out


def test_policy_test_predicts_each_disk(
    plugin_bed: VsphereBed, fresh_vm: Callable[[], VmInfo], vcenter: str,
    new_repo: Callable[[str], Path], tmp_path: Path, cli: Cli,
) -> None:  # fmt: skip
    repo = new_repo("repo")
    vm = _with_disk(plugin_bed, fresh_vm(), tmp_path, 6)
    add_policy(ctx_for(repo), _policy("probe", vcenter, vm_patterns=[vm.name]))
    before = cli("policy", "test", "probe", "--repo", repo, "--json")
    assert before.rc == 0, before.err
    ((disk,),) = [v["disks"] for v in before.json["vms"] if v["vm"] == vm.name]
    assert (disk["mode"], disk["reason"]) == ("full", "no earlier backup of this disk")
    _run_now(repo, "probe")
    plugin_bed.control.guest_write(vm.name, 0, 0, b"x" * 4096)
    after = cli("policy", "test", "probe", "--repo", repo)
    assert after.rc == 0, after.err
    assert "incremental (CBT changes since" in after.out


def test_a_failed_run_is_retried_then_mailed_and_posted_by_the_daemon(
    plugin_bed: VsphereBed, fresh_vm: Callable[[], VmInfo], vcenter: str,
    new_repo: Callable[[str], Path], tmp_path: Path, config_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    repo = new_repo("repo")
    vm = _with_disk(plugin_bed, fresh_vm(), tmp_path, 7)
    told = _policy("told", vcenter, vm_patterns=[vm.name], retries=1,
                   notify_channels=["hook", "mail"], notify_events=["failure"])  # fmt: skip
    add_policy(ctx_for(repo), told)
    plugin_bed.control.inject_fault("snapshot", count=-1)
    monkeypatch.setenv("VMACCEL_TEST_SMTP_PASSWORD", PASSWORD)  # the daemon inherits it
    (tmp_path / "tls").mkdir()
    cert = make_cert(tmp_path / "tls")
    with http_receiver() as receiver, smtp_server(cert) as (smtp_port, mailbox):
        (config_dir / "notify.toml").write_text(
            f'[channels.hook]\ntype = "webhook"\nformat = "json"\n'
            f'url = "http://127.0.0.1:{receiver.port}/hook"\n'
            f'[channels.mail]\ntype = "smtp"\nhost = "127.0.0.1"\nport = {smtp_port}\n'
            f'security = "starttls"\nuser = "{USER}"\n'
            f'password_env = "VMACCEL_TEST_SMTP_PASSWORD"\nca_file = "{cert.cert}"\n'
            f'from = "vmaccel@test"\nto = ["ops@test"]\n'
        )
        with serve(repo, tmp_path / "serve.log"):
            wait_for("the webhook", lambda: receiver.posts)
            wait_for("the mail", lambda: mailbox.mails)
    path, body = receiver.posts[0]
    text = json.dumps(body)
    assert path == "/hook" and "told" in text and "failed" in text and vm.name in text
    assert '"attempts": 2' in text  # the first try and the one retry, then reported
    envelope, message, user, over_tls = mailbox.mails[0]
    assert envelope.rcpt_tos == ["ops@test"] and user == USER and over_tls
    assert "told" in str(message["Subject"]) and vm.name in message.as_string()

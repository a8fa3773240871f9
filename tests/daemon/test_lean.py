"""The daemon stays lean: policy runs execute in worker processes, so the daemon's own
memory after runs stays where it was before them, and a run-now (through the REST API in
the daemon's process, or `policy run --queue` from another process) starts within seconds
without waiting for the next scheduler pass (the tick here is 30 s)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from testbed.vsphere.bed import VmInfo, VsphereBed
from tests.daemon.servebed import (
    VMACCEL,
    ctx_for,
    serve,
    slow_disk,
    vmaccel_snapshots,
    wait_for,
)
from tests.daemon.test_serve import _policy, _with_disk
from tests.plugin.conftest import (
    _fresh_vms,
    cli,
    config_dir,
    fresh_vm,
    new_repo,
    plugin_bed,
    tagger,
    vcenter,
)
from vmaccel.service.jobs import cancel_job, show_job
from vmaccel.service.policies import add_policy, run_policy_now
from vmaccel.service.tokens import create_token

__all__ = [  # fixtures of the plugin tests' bed
    "_fresh_vms", "cli", "config_dir", "fresh_vm", "new_repo", "plugin_bed", "tagger", "vcenter",
]  # fmt: skip
pytestmark = pytest.mark.vsphere
MiB = 1024 * 1024
YEARLY = "0 0 1 1 *"  # never due during the test: runs start only when asked
START_WITHIN = 3.0  # seconds from a run-now to its job running


def _rss(pid: int) -> int:
    """The process's resident set in bytes (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _started_within(repo: Path, job_id: int, since: float) -> float:
    """Seconds from ``since`` until job ``job_id`` left the queue."""
    wait_for(f"job {job_id} to start", lambda: show_job(ctx_for(repo), job_id).job.state
             != "queued", timeout=30)  # fmt: skip
    return time.monotonic() - since


def _ended(repo: Path, job_id: int) -> str:
    """The state job ``job_id`` ends in."""

    def probe() -> str | None:
        job = show_job(ctx_for(repo), job_id).job
        return job.state if job.finished is not None else None

    return wait_for(f"job {job_id} to end", probe, timeout=180)


def test_runs_leave_the_daemon_lean_and_run_now_starts_at_once(
    plugin_bed: VsphereBed, fresh_vm: Callable[[], VmInfo], vcenter: str,
    new_repo: Callable[[str], Path], tmp_path: Path,
) -> None:  # fmt: skip
    repo = new_repo("repo")
    vm = _with_disk(plugin_bed, fresh_vm(), tmp_path, 21)
    add_policy(ctx_for(repo), _policy("lean", vcenter, vm_patterns=[vm.name], schedule=YEARLY))
    secret = create_token(ctx_for(repo), "admin", "lean test").secret
    port, log = _free_port(), tmp_path / "serve.log"
    cert = str(ctx_for(repo).config_dir / "tls" / "serve-cert.pem")  # made by the daemon
    auth = {"Authorization": f"Bearer {secret}"}
    url = f"https://127.0.0.1:{port}/api/v1"
    with serve(repo, log, "--tick", "30", listen=f"127.0.0.1:{port}") as proc:
        wait_for("the REST API", lambda: "REST API on" in log.read_text(), timeout=60)
        warm = requests.get(f"{url}/policies", headers=auth, verify=cert, timeout=30)
        assert warm.status_code == 200  # the API's first request loads what it needs
        time.sleep(1.0)
        before = _rss(proc.pid)

        # Run-now through the API (queued in the daemon's own process).
        asked = time.monotonic()
        reply = requests.post(f"{url}/policies/lean/run", headers=auth, verify=cert, timeout=30)
        assert reply.status_code == 202, reply.text
        first = int(reply.json()["id"])
        assert _started_within(repo, first, asked) < START_WITHIN
        assert _ended(repo, first) in ("succeeded", "warning")

        # Run-now from another process (`policy run --queue`): the daemon polls the queue.
        queued = subprocess.run(
            [str(VMACCEL), "policy", "run", "lean", "--queue", "--json", "--repo", str(repo)],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        asked = time.monotonic()
        second = int(json.loads(queued.stdout)["id"])
        assert _started_within(repo, second, asked) < START_WITHIN
        assert _ended(repo, second) in ("succeeded", "warning")
        time.sleep(1.0)
        after = _rss(proc.pid)
    assert after - before < 6 * MiB, f"daemon RSS {before / MiB:.1f} -> {after / MiB:.1f} MiB"
    assert not vmaccel_snapshots(plugin_bed).get(vm.name)


def _worker_pid(log: Path, job_id: int) -> int:
    """The pid of the worker that runs job ``job_id`` (from the daemon's log)."""
    pattern = re.compile(rf"run {job_id} started in worker (\d+)")
    found = wait_for(f"the worker of job {job_id}", lambda: pattern.search(log.read_text()))
    return int(found.group(1))


def test_cancel_reaches_the_worker_and_a_killed_worker_is_recovered(
    plugin_bed: VsphereBed, fresh_vm: Callable[[], VmInfo], vcenter: str,
    new_repo: Callable[[str], Path], tmp_path: Path,
) -> None:  # fmt: skip
    repo = new_repo("repo")
    vm = fresh_vm()
    plugin_bed.control.attach_disk(vm.name, slow_disk(tmp_path / "disk22", 22))
    add_policy(ctx_for(repo), _policy("slow", vcenter, vm_patterns=[vm.name], schedule=YEARLY))
    log = tmp_path / "serve.log"

    def snapshot() -> list[str] | None:
        return vmaccel_snapshots(plugin_bed).get(vm.name)

    with serve(repo, log, "--tick", "30") as proc:
        wait_for("the daemon", lambda: "serving" in log.read_text())
        cancelled = run_policy_now(ctx_for(repo), "slow").id
        wait_for("the VM's backup snapshot", snapshot, timeout=120)
        cancel_job(ctx_for(repo), cancelled)  # through the job row the worker polls
        assert _ended(repo, cancelled) == "cancelled"
        assert not snapshot()

        killed = run_policy_now(ctx_for(repo), "slow").id
        worker = _worker_pid(log, killed)
        wait_for("the VM's backup snapshot", snapshot, timeout=120)
        os.kill(worker, signal.SIGKILL)
        assert _ended(repo, killed) == "interrupted"  # the daemon recovers at once
        wait_for("the leftover snapshot removed", lambda: not snapshot())
        assert proc.poll() is None  # the daemon serves on
    (v,) = show_job(ctx_for(repo), killed).vms
    assert (v.state, v.backup_id) == ("interrupted", None)

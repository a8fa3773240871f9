"""The daemon side of the serve bench: ``vmaccel serve`` as a child process, its idle cost
read from ``/proc``, and one tag-driven policy run timed from the job table.

* :class:`ProcSample`: ``/proc/PID/stat`` utime+stime (CPU seconds, all threads) and
  ``/proc/PID/status`` VmRSS / VmHWM (MiB) / Threads of one process at one moment.
* :func:`idle`: two samples ``seconds`` apart; CPU as a percentage of one core.
* :func:`policy_run`: queue a run ("run now", as ``vmaccel policy run --queue`` and the API
  do), wait for the job to end; the times come from the job rows the daemon wrote, so the
  bench's polling interval does not blur them.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_bed import VMACCEL, log

from vmaccel.service.context import Context
from vmaccel.service.jobs import JobDetail, show_job
from vmaccel.service.policies import run_policy_now

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcSample:
    """One process at one moment: ``cpu_s`` user+system CPU seconds since it started,
    ``rss_mib`` resident now (``anon_mib`` of it anonymous: heap, not mapped files),
    ``hwm_mib`` the peak resident size so far, ``threads``."""

    at: float
    cpu_s: float
    rss_mib: float
    anon_mib: float
    hwm_mib: float
    threads: int

    @classmethod
    def of(cls, pid: int) -> ProcSample:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        # after the command: state is field 3 of stat(5), utime 14, stime 15
        cpu = (int(stat[11]) + int(stat[12])) / CLK_TCK
        status: dict[str, str] = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            status[key] = value.strip()
        mib = {k: int(status[k].split()[0]) / 1024 for k in ("VmRSS", "RssAnon", "VmHWM")}
        return cls(time.monotonic(), cpu, mib["VmRSS"], mib["RssAnon"], mib["VmHWM"],
                   int(status["Threads"]))  # fmt: skip


def idle(pid: int, seconds: float) -> dict[str, Any]:
    """The process's CPU (percent of one core) and memory over ``seconds`` of idling."""
    first = ProcSample.of(pid)
    time.sleep(seconds)
    last = ProcSample.of(pid)
    span = last.at - first.at
    return {
        "seconds": round(span, 1),
        "cpu_s": round(last.cpu_s - first.cpu_s, 3),
        "cpu_pct_of_core": round(100 * (last.cpu_s - first.cpu_s) / span, 3),
        "rss_mib": round(last.rss_mib, 1),
        "anon_mib": round(last.anon_mib, 1),
        "hwm_mib": round(last.hwm_mib, 1),
        "threads": last.threads,
        "load_avg": round(os.getloadavg()[0], 2),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(proc: subprocess.Popen[bytes], port: int, timeout: float, logfile: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vmaccel serve exited {proc.returncode}:\n"
                               f"{logfile.read_text(errors='replace')[-3000:]}")  # fmt: skip
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the REST API did not listen within {timeout} s")


@dataclass(frozen=True)
class Served:
    """A running daemon: its process, the API's port, seconds from spawn to listening."""

    proc: subprocess.Popen[bytes]
    port: int
    startup_s: float
    logfile: Path


@contextmanager
def serving(env: dict[str, str], repo: Path, tick: float, logfile: Path) -> Iterator[Served]:
    """``vmaccel serve`` with the REST API on a free local port, in environment ``env``, until
    the block ends; then SIGTERM (a clean stop is checked: exit status 0)."""
    port = _free_port()
    argv = [VMACCEL, "serve", "--repo", str(repo), "--listen", f"127.0.0.1:{port}",
            "--tick", str(tick)]  # fmt: skip
    started = time.monotonic()
    with logfile.open("ab") as out:
        proc = subprocess.Popen(argv, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    try:
        _wait_port(proc, port, 120, logfile)
        yield Served(proc, port, time.monotonic() - started, logfile)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"vmaccel serve ended with {proc.returncode} (log: {logfile})")


@contextmanager
def profiled(pid: int, spy: str | None, out: Path) -> Iterator[None]:
    """``py-spy record`` of process ``pid`` (idle threads too: the wall time's split) while
    the block runs, collapsed stacks to ``out``; nothing when ``spy`` is None."""
    if spy is None:
        yield
        return
    argv = [spy, "record", "--pid", str(pid), "--idle", "--rate", "250", "--format", "raw",
            "--output", str(out)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        proc.wait(60)


def _wait_job(ctx: Context, job_id: int, timeout: float, poll: float) -> JobDetail:
    deadline = time.monotonic() + timeout
    while True:
        detail = show_job(ctx, job_id)
        if detail.job.finished is not None:
            return detail
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} did not end within {timeout} s")
        time.sleep(poll)


def policy_run(ctx: Context, policy: str, pid: int, timeout: float) -> dict[str, Any]:
    """Queue a run of ``policy`` now and wait for it; times in seconds (see the module
    docstring): ``from_tick_s`` = last VM job done - the run claimed at a tick (the headline
    figure), ``from_run_now_s`` = the same from the request, ``job_s`` = the whole job
    (prune after the run included). CPU and peak RSS of the daemon over the run."""
    before = ProcSample.of(pid)
    asked = time.time()
    job = run_policy_now(ctx, policy, who="bench")
    log(f"queued run {job.id} of policy {policy}")
    detail = _wait_job(ctx, job.id, timeout, poll=1.0)
    after = ProcSample.of(pid)
    return {"job_id": job.id, "state": detail.job.state,
            **_times(detail, asked), **_outcome(detail),
            "daemon_cpu_s": round(after.cpu_s - before.cpu_s, 2),
            "daemon_hwm_mib": round(after.hwm_mib, 1),
            "daemon_rss_after_mib": round(after.rss_mib, 1)}  # fmt: skip


def _times(detail: JobDetail, asked: float) -> dict[str, Any]:
    job = detail.job
    assert job.started is not None and job.finished is not None
    ends = [v.finished for v in detail.vms if v.finished is not None]
    last = max(ends) if ends else job.finished
    durations = [v.finished - v.started for v in detail.vms
                 if v.finished is not None and v.started is not None]  # fmt: skip
    return {
        "from_tick_s": round(last - job.started, 3),
        "from_run_now_s": round(last - asked, 3),
        "queue_wait_s": round(job.started - asked, 3),
        "job_s": round(job.finished - job.started, 3),
        "after_last_vm_s": round(job.finished - last, 3),
        "vm_median_s": round(statistics.median(durations), 3) if durations else None,
    }


def _outcome(detail: JobDetail) -> dict[str, Any]:
    states: dict[str, int] = {}
    modes: dict[str, int] = {}
    for v in detail.vms:
        states[v.state] = states.get(v.state, 0) + 1
        for d in v.disks:
            modes[d.mode or "none"] = modes.get(d.mode or "none", 0) + 1
    return {
        "vm_jobs": len(detail.vms),
        "vm_states": states,
        "disk_modes": modes,
        "bytes_read": sum(v.bytes_read for v in detail.vms),
        "bytes_stored": sum(v.bytes_stored for v in detail.vms),
        "errors": sorted({v.error for v in detail.vms if v.error})[:5],
    }

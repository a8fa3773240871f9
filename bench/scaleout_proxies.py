#!/usr/bin/env python3
"""Scale-out bench, part 2: one policy run over 12 VMs of the vCenter bed, backed up by
backup proxies (``vmaccel worker``) on a PostgreSQL catalog: 1 worker, then 3 workers.

The bed (``serve_bed.prepared``) has 12 VMs, each with a small sparse disk (``--disk-mib``,
about a third random data), change tracking on. For each worker count: a fresh repository
(``repo init --catalog`` a new database, so both runs make full backups), the workers started
(``--max-jobs 2`` each) and given ``--settle`` seconds to connect, then a policy selecting the
12 VMs (parallel 12, no quiescing, no retries, transport auto) queued and driven as the
daemon's runner does on a PostgreSQL catalog (``Runner(..., queue=url)``): the VMs go to
the queue, the workers take them. Wall seconds are timed around the runner (queue to the last
VM job) and also read from the job row, with the CPU the PostgreSQL server and the bed spent.
The workers are then stopped with SIGTERM and reaped with ``wait4``: each one's CPU seconds
and peak RSS. The job log says which worker backed up which VM.

Every disk of the bed is on one datastore, so the workers' ``--max-per-datastore`` (the
snapshot limit they share through the catalog) is set to ``--max-per-datastore`` (6: three
workers' 2 jobs each) rather than the product default (4), which would cap the 3-worker run.

Run by ``bench_scaleout.py``; alone: ``scaleout_proxies.py --work DIR --pg URL`` with
``PGPASSWORD`` set.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from scaleout_common import (
    MiB,
    emit,
    load_avg,
    new_database,
    parse_servers,
    server_cpu,
)
from serve_bed import VCENTER, VMACCEL, BenchBed, cli, log, prepared

from vmaccel.daemon.runner import Runner
from vmaccel.service.context import Context
from vmaccel.service.jobs import JobDetail, job_log, owner_id, show_job
from vmaccel.service.policies import add_policy, get_policy, run_policy_now
from vmaccel.service.policyspec import Policy

POLICY = "scaleout"


def policy_for(vms: tuple[str, ...], parallel: int) -> Policy:
    """The VMs by name, never due by schedule, crash-consistent, no retries, no pruning."""
    return Policy.from_dict({
        "name": POLICY, "vcenter": VCENTER, "schedule": "0 0 1 1 *", "quiesce": False,
        "vm_patterns": list(vms), "parallel": parallel, "retries": 0,
        "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0,
    })  # fmt: skip


def start_workers(bb: BenchBed, repo: Path, count: int, args: argparse.Namespace,
                  log_path: Path) -> list[subprocess.Popen[bytes]]:  # fmt: skip
    """``count`` ``vmaccel worker`` children of ``repo``, named w1..wN."""
    procs = []
    with log_path.open("ab") as out:
        for n in range(1, count + 1):
            argv = [VMACCEL, "worker", "--repo", str(repo), "--name", f"w{n}",
                    "--max-jobs", str(args.max_jobs),
                    "--max-per-datastore", str(args.max_per_datastore),
                    "--heartbeat", "1", "--stop-timeout", "30"]  # fmt: skip
            procs.append(subprocess.Popen(argv, env=bb.env, stdout=out, stderr=subprocess.STDOUT))
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> list[dict[str, float]]:
    """SIGTERM every worker, then reap each with ``wait4``: exit code, CPU s, peak RSS MiB."""
    for proc in procs:
        os.kill(proc.pid, signal.SIGTERM)
    out = []
    for proc in procs:
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.append({"exit_code": proc.returncode, "cpu_s": ru.ru_utime + ru.ru_stime,
                    "rss_mib": ru.ru_maxrss / 1024})  # fmt: skip
    return out


def drive(ctx: Context, policy: Policy, url: str) -> tuple[JobDetail, float]:
    """Queue a run of ``policy`` and run it as the daemon's runner does; detail, wall s."""
    add_policy(ctx, policy, who="bench")
    job = run_policy_now(ctx, policy.name)
    start = time.monotonic()
    Runner(ctx, owner_id(), threading.Event(), queue=url).run(
        get_policy(ctx, policy.name).policy, job.id
    )
    wall = time.monotonic() - start
    return show_job(ctx, job.id), wall


def spread(ctx: Context, job_id: int) -> dict[str, int]:
    """Worker name -> VMs it backed up (first attempts, from the job log)."""
    out: dict[str, int] = {}
    for line in job_log(ctx, job_id):
        if ": attempt 1 on " in line.message:
            name = line.message.rsplit(" on ", 1)[1]
            out[name] = out.get(name, 0) + 1
    return out


def one_run(bb: BenchBed, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """A fresh repository, ``workers`` proxies, one policy run; its figures."""
    repo = bb.work / f"repo-{workers}w"
    url = new_database(args.pg)
    cli(bb.env, "repo", "init", "--repo", repo, "--catalog", url)
    load = load_avg()
    procs = start_workers(bb, repo, workers, args, bb.work / f"workers-{workers}w.log")
    try:
        time.sleep(args.settle)
        log(f"{workers} worker(s): policy run of {len(bb.vms)} VMs")
        ctx = Context.from_env(bb.env, repo)
        servers = {**args.servers, "bed": bb.bed._process.pid}  # the simulated vCenter + ESXi
        before = server_cpu(servers)
        detail, wall = drive(ctx, policy_for(bb.vms, args.parallel), url)
        after = server_cpu(servers)
    finally:
        reaped = stop_workers(procs)
    job = detail.job
    states = [v.state for v in detail.vms]
    if job.state not in ("succeeded", "warning") or any(v.backup_id is None for v in detail.vms):
        raise RuntimeError(f"{workers} worker(s): run {job.state}: {detail.summary()}")
    return {
        "workers": workers, "load_avg_start": load, "wall_s": wall,
        "job_s": (job.finished or 0.0) - (job.started or 0.0),
        "vms_per_min": len(detail.vms) * 60 / wall, "vm_states": states,
        "bytes_read": sum(v.bytes_read for v in detail.vms),
        "bytes_stored": sum(v.bytes_stored for v in detail.vms),
        "vms_by_worker": spread(ctx, job.id), "worker_procs": reaped,
        "worker_rss_mib_max": max(r["rss_mib"] for r in reaped),
        "server_cpu_s": {k: after[k] - before[k] for k in after},
    }  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The part's JSON document (see the module docstring)."""
    args.work.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"load_avg_start": load_avg(), "disk_mib": args.disk_mib,
                           "max_jobs": args.max_jobs, "parallel": args.parallel,
                           "max_per_datastore": args.max_per_datastore}  # fmt: skip
    start = time.monotonic()
    with prepared(args.vms, args.disk_mib, args.work) as bb:
        doc["bed_s"] = time.monotonic() - start
        doc["vms"], doc["data_mib"] = len(bb.vms), bb.data_bytes / MiB
        log(f"bed ready in {doc['bed_s']:.0f} s: {len(bb.vms)} VMs, {doc['data_mib']:.0f} MiB")
        runs = [one_run(bb, n, args) for n in args.workers]
    doc["runs"] = {f"{r['workers']}w": r for r in runs}
    if len(runs) == 2:
        doc["ratio_speedup"] = runs[0]["wall_s"] / runs[1]["wall_s"]
        doc["ratio_workers"] = runs[1]["workers"] / runs[0]["workers"]
    doc["cpu_count"] = os.cpu_count()
    doc["load_avg_end"] = load_avg()
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="scratch directory (kept)")
    p.add_argument("--pg", required=True, help="postgresql://USER@HOST:PORT/postgres")
    p.add_argument("--vms", type=int, default=12)
    p.add_argument("--disk-mib", type=int, default=128, help="each VM's disk (~35 %% data)")
    p.add_argument("--workers", type=int, nargs=2, default=[1, 3], help="the two runs")
    p.add_argument("--max-jobs", type=int, default=2, help="each worker's --max-jobs")
    p.add_argument("--max-per-datastore", type=int, default=6, help="each worker's")
    p.add_argument("--parallel", type=int, default=12, help="the policy's parallel")
    p.add_argument("--servers", type=parse_servers, default={},
                   help="postgres=PID: its CPU during each run is measured too")  # fmt: skip
    p.add_argument("--settle", type=float, default=5.0, help="seconds for workers to start")
    args = p.parse_args(argv)
    return emit(run(args))


if __name__ == "__main__":
    sys.exit(main())

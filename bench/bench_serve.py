#!/usr/bin/env python3
"""Serve benchmark: one tag-driven policy run of the daemon against the same VMs backed up
by separate ``vmaccel backup`` calls; the idle daemon's memory and CPU; the REST API's list
latency (``serve_api.py``). Issue 13's "Proof" figures.

Run by hand, never from CI (``bench/README.md`` explains every figure)::

    .venv/bin/python bench/bench_serve.py [--vms 50] [--quick] [--json] [--dir DIR]

One run: a bed with ``--vms`` VMs, each with a small sparse disk (``--disk-mib``, about a
third of it random data), all tagged ``backup:bench-serve``. ``vmaccel serve`` (REST API up,
``--tick`` seconds) serves repository A holding one policy that selects the tag; the bench
samples the idle daemon, asks for a run now and times it from the job table, samples the
idle daemon again; then the same VMs are backed up into repository B by one ``vmaccel
backup --vm NAME`` child per VM, one after the other. Both sides make full backups of VMs
that have none in their repository, with the same transport and no quiescing. Last,
``serve_api.py`` runs as a child and its figures are merged in.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after ROOT: bench/ must not shadow our packages

from serve_bed import VCENTER, VMACCEL, BenchBed, cli, log, prepared  # noqa: E402
from serve_daemon import idle, policy_run, profiled, serving  # noqa: E402

from vmaccel.service.context import Context  # noqa: E402
from vmaccel.service.policies import add_policy  # noqa: E402
from vmaccel.service.policyspec import Policy  # noqa: E402

MiB = 1 << 20
PY = str(ROOT / ".venv/bin/python")
POLICY = "bench"
TARGETS = {"daemon_over_cli_max": 0.3, "idle_rss_mib_max": 100.0, "idle_cpu_pct_max": 1.0,
           "api_p99_ms_max": 100.0}  # fmt: skip


def wait4(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run a child; wall and CPU seconds and peak RSS (MiB) from its own rusage, and its
    stdout. Raises with the output when it fails."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        text, errors = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {code}:\n{errors[-3000:]}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
            "rss_mib": ru.ru_maxrss / 1024, "stdout": text}  # fmt: skip


def _transport(bb: BenchBed, kind: str) -> tuple[str, ...]:
    """``DATASTORE=DIR`` for the file transport (the bed's datastore, as an NFS mount would
    be); nothing for auto, which reads over the datastore HTTP interface."""
    if kind == "auto":
        return ()
    return tuple(f"{name}={path}" for name, path in sorted(bb.bed.datastore_dirs.items()))


def policy_for(bb: BenchBed, args: argparse.Namespace) -> Policy:
    """The policy of the daemon side: the bench's tag, never due by its schedule (the bench
    asks for the run), no quiescing, no retries (a failure is counted, not hidden)."""
    return Policy.from_dict({
        "name": POLICY, "vcenter": VCENTER, "tags": [bb.tag], "schedule": "0 0 1 1 *",
        "quiesce": False, "parallel": args.parallel, "retries": 0, "transport": args.transport,
        "datastore_paths": list(_transport(bb, args.transport)),
    })  # fmt: skip


def daemon_side(bb: BenchBed, args: argparse.Namespace) -> dict[str, Any]:
    """Repository A: the policy, the daemon, idle / run / idle again."""
    repo = bb.work / "repo-daemon"
    cli(bb.env, "repo", "init", "--repo", repo)
    ctx = Context.from_env(bb.env, repo)
    add_policy(ctx, policy_for(bb, args), who="bench")
    env = {**bb.env, **dict(kv.split("=", 1) for kv in args.daemon_env)}
    with serving(env, repo, args.tick, bb.work / "serve.log") as served:
        pid = served.proc.pid
        log(f"daemon {pid} listening after {served.startup_s:.1f} s; settling {args.settle} s")
        time.sleep(args.settle)
        log(f"idle for {args.idle_seconds} s")
        before = idle(pid, args.idle_seconds)
        log(f"policy run of {len(bb.vms)} VMs")
        with profiled(pid, args.profile, bb.work / "profile-daemon-run.txt"):
            run = policy_run(ctx, POLICY, pid, timeout=args.timeout)
        log(f"run: {run['from_tick_s']:.1f} s from the tick ({run['vm_states']}); idle again")
        after = idle(pid, args.idle_seconds)
    return {"startup_s": round(served.startup_s, 2), "tick_s": args.tick,
            "parallel": args.parallel, "env": args.daemon_env, "idle": before, "run": run,
            "idle_after_run": after}  # fmt: skip


def _backup_one(bb: BenchBed, repo: Path, vm: str, args: argparse.Namespace) -> dict[str, Any]:
    paths = [a for p in _transport(bb, args.transport) for a in ("--datastore-path", p)]
    argv = [VMACCEL, "backup", "--repo", str(repo), "--vcenter", VCENTER, "--vm", vm,
            "--no-quiesce", "--transport", args.transport, *paths, "--json"]  # fmt: skip
    run = wait4(argv, bb.env)
    report = json.loads(run.pop("stdout"))
    (vm_report,) = report["vms"]
    if not vm_report["ok"]:
        raise RuntimeError(f"vmaccel backup of {vm} failed: {vm_report.get('error')}")
    run["modes"] = [d["mode"] for d in vm_report["disks"]]
    run["bytes_read"] = sum(d["bytes_read"] for d in vm_report["disks"])
    return run


def cli_side(bb: BenchBed, args: argparse.Namespace) -> dict[str, Any]:
    """Repository B: one ``vmaccel backup`` child per VM, one after the other."""
    repo = bb.work / "repo-cli"
    cli(bb.env, "repo", "init", "--repo", repo)
    startup = wait4([VMACCEL, "backup", "--help"], bb.env)["wall_s"]
    log(f"{len(bb.vms)} separate vmaccel backup calls")
    started = time.monotonic()
    calls = [_backup_one(bb, repo, vm, args) for vm in bb.vms]
    total = time.monotonic() - started
    modes: dict[str, int] = {}
    for c in calls:
        for m in c["modes"]:
            modes[m] = modes.get(m, 0) + 1
    walls = [c["wall_s"] for c in calls]
    return {
        "total_s": round(total, 3),
        "calls": len(calls),
        "call_median_s": round(statistics.median(walls), 3),
        "call_max_s": round(max(walls), 3),
        "cpu_s": round(sum(c["cpu_s"] for c in calls), 2),
        "rss_mib_max": round(max(c["rss_mib"] for c in calls), 1),
        "startup_s": round(startup, 3),
        "disk_modes": modes,
        "bytes_read": sum(c["bytes_read"] for c in calls),
    }


def api_side(args: argparse.Namespace) -> dict[str, Any] | None:
    """``serve_api.py --json`` as a child (its own process, its own peak RSS)."""
    script = ROOT / "bench" / "serve_api.py"
    if args.api_backups == 0 or not script.exists():
        return None
    argv = [PY, str(script), "--backups", str(args.api_backups), "--vms", "50",
            "--requests", str(args.api_requests), "--json"]  # fmt: skip
    log(f"serve_api.py: {args.api_backups} backups, {args.api_requests} requests per endpoint")
    run = wait4(argv, {**os.environ, "PYTHONPATH": str(ROOT)})
    doc: dict[str, Any] = json.loads(run["stdout"])
    doc["wall_s"], doc["rss_mib"] = round(run["wall_s"], 1), round(run["rss_mib"], 1)
    return doc


def ratios(doc: dict[str, Any]) -> dict[str, Any]:
    """The issue's figures and whether each target is met (None: not measured)."""
    run, cli_run, api = doc["daemon"]["run"], doc["cli"], doc.get("api")
    idles = (doc["daemon"]["idle"], doc["daemon"]["idle_after_run"])
    out: dict[str, Any] = {
        "daemon_over_cli": round(run["from_tick_s"] / cli_run["total_s"], 3),
        "daemon_over_cli_from_run_now": round(run["from_run_now_s"] / cli_run["total_s"], 3),
        "daemon_job_over_cli": round(run["job_s"] / cli_run["total_s"], 3),
        "idle_rss_mib": max(i["rss_mib"] for i in idles),
        "idle_cpu_pct_of_core": max(i["cpu_pct_of_core"] for i in idles),
        "api_list_p99_ms": None,
    }
    if api:
        lists = {k: v for k, v in api["endpoints"].items() if k != "/health"}
        out["api_list_p99_ms"] = round(max(v["p99_ms"] for v in lists.values()), 1)
        out["api_worst_endpoint"] = max(lists, key=lambda k: lists[k]["p99_ms"])
    p99 = out["api_list_p99_ms"]
    out["met"] = {
        "daemon_over_cli": out["daemon_over_cli"] <= TARGETS["daemon_over_cli_max"],
        "idle_rss": out["idle_rss_mib"] < TARGETS["idle_rss_mib_max"],
        "idle_cpu": out["idle_cpu_pct_of_core"] < TARGETS["idle_cpu_pct_max"],
        "api_p99": None if p99 is None else p99 < TARGETS["api_p99_ms_max"],
    }
    return out


def table(doc: dict[str, Any]) -> list[str]:
    """The report for people."""
    d, c, r = doc["daemon"], doc["cli"], doc["ratios"]
    run = d["run"]
    lines = [
        f"{doc['vms']} VMs, {doc['disk_mib']} MiB disks ({doc['data_mib']:.1f} MiB of data in "
        f"all), full backups, transport {doc['transport']}{' (--quick)' if doc['quick'] else ''}"
        f"; load {doc['load_avg_start']}",
        f"daemon, one policy run (parallel {d['parallel']}, tick {d['tick_s']} s): "
        f"{run['from_tick_s']:.1f} s from the tick to the last VM job "
        f"({run['from_run_now_s']:.1f} s from run now, job {run['job_s']:.1f} s with prune); "
        f"{run['vm_states']}; daemon CPU {run['daemon_cpu_s']} s, peak RSS "
        f"{run['daemon_hwm_mib']} MiB",
        f"{c['calls']} vmaccel backup calls: {c['total_s']:.1f} s (median {c['call_median_s']}"
        f" s a call, of which start-up ~{c['startup_s']} s; CPU {c['cpu_s']} s)",
        f"ratio daemon/CLI: {r['daemon_over_cli']} (target <= {TARGETS['daemon_over_cli_max']})",
    ]
    for key, label in (("idle", "idle daemon"), ("idle_after_run", "idle after the run")):
        i = d[key]
        lines.append(f"{label}: RSS {i['rss_mib']} MiB ({i['anon_mib']} anonymous; peak "
                     f"{i['hwm_mib']}), CPU "
                     f"{i['cpu_pct_of_core']} % of a core over {i['seconds']} s, "
                     f"{i['threads']} threads")  # fmt: skip
    if doc.get("api"):
        api = doc["api"]
        lines.append(f"API with {api['backups']} backups: worst list p99 "
                     f"{r['api_list_p99_ms']} ms ({r['api_worst_endpoint']})")  # fmt: skip
        for path, f in api["endpoints"].items():
            lines.append(f"  {path:42} p50 {f['p50_ms']:7.1f}  p99 {f['p99_ms']:7.1f} ms")
    lines.append(f"targets met: {r['met']}")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vms", type=int, default=None, help="VMs in the policy (50; --quick 8)")
    p.add_argument("--quick", action="store_true", help="8 VMs, 20 s idle, 1,000 API backups")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--disk-mib", type=int, default=16, help="each VM's disk (about 35 %% data)")
    p.add_argument("--parallel", type=int, default=4, help="the policy's VMs at once")
    p.add_argument("--tick", type=float, default=30.0, help="the daemon's --tick (its default)")
    p.add_argument("--transport", choices=("auto", "file"), default="auto")
    p.add_argument("--idle-seconds", type=float, default=None, help="each idle window (60)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after start-up")
    p.add_argument("--api-backups", type=int, default=None, help="serve_api.py (10000; 0: skip)")
    p.add_argument("--api-requests", type=int, default=None, help="per endpoint (200)")
    p.add_argument("--daemon-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment of the daemon only (repeatable), e.g. "
                   "MALLOC_ARENA_MAX=2")  # fmt: skip
    p.add_argument("--profile", metavar="PY_SPY", help="py-spy binary: profile the daemon's "
                   "run into DIR/profile-daemon-run.txt (collapsed stacks)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds the run may take")
    p.add_argument("--dir", type=Path, help="work here (kept) instead of a scratch directory")
    args = p.parse_args(argv)
    if any("=" not in kv for kv in args.daemon_env):
        p.error("--daemon-env takes NAME=VALUE")
    quick = args.quick
    args.vms = args.vms or (8 if quick else 50)
    args.idle_seconds = args.idle_seconds or (20.0 if quick else 60.0)
    args.api_backups = args.api_backups if args.api_backups is not None else (
        1000 if quick else 10_000)  # fmt: skip
    args.api_requests = args.api_requests or (50 if quick else 200)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load = round(os.getloadavg()[0], 2)
    with prepared(args.vms, args.disk_mib, args.dir) as bb:
        log(f"bed ready: {len(bb.vms)} VMs tagged {bb.tag}")
        doc: dict[str, Any] = {
            "quick": args.quick, "vms": len(bb.vms), "disk_mib": args.disk_mib,
            "data_mib": round(bb.data_bytes / MiB, 1), "transport": args.transport,
            "mode": "full", "load_avg_start": load,
        }  # fmt: skip
        doc["daemon"] = daemon_side(bb, args)
        doc["cli"] = cli_side(bb, args)
    doc["api"] = api_side(args)
    doc["load_avg_end"] = round(os.getloadavg()[0], 2)
    doc["targets"] = TARGETS
    doc["ratios"] = ratios(doc)
    if args.json:
        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print("\n".join(table(doc)))


if __name__ == "__main__":
    main()

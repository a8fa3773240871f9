#!/usr/bin/env python3
"""Many-VMs benchmark: N small VMs in ONE ``vmaccel backup`` run, full then incremental.

Issue 16's target: the wall of one run over many small VMs is at most 3x the sum of their
disk work (each disk's ``duration`` in the JSON report). Run by hand, never from CI::

    .venv/bin/python bench/bench_manyvms.py [--vms 100] [--quick] [--json] [--parallel N]

One bed (``bench/serve_bed.py``: N VMs, each with a small sparse disk, CBT on), vCenter
``bench`` registered in a private config directory. Run 1 is a full backup of every VM in
one child; then each VM gets a day of small changes (``--change-mib`` of random 64 KiB blocks
written as the guest would); run 2 is the incremental, again one child. Per run: wall
seconds, the sum of disk work, their ratio, VMs per minute, the child's vCenter round trips
(SOAP calls, counted by a wrapper around the child) and its peak RSS (wait4).
``--parallel`` passes that option to the CLI (default: the CLI's own default);
``--transport file`` reads the bed's datastore directories instead of datastore HTTP.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after ROOT: bench/ must not shadow our packages

from serve_bed import VCENTER, BenchBed, cli, log, prepared  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
PY = str(ROOT / ".venv/bin/python")
TARGET_RATIO = 3.0

# The child: the vmaccel CLI with every SOAP call counted by method; JSON to argv[1].
_COUNTED = """
import atexit, collections, json, sys, threading
from pyVmomi import SoapAdapter
out, sys.argv = sys.argv[1], ["vmaccel", *sys.argv[2:]]
calls, lock = collections.Counter(), threading.Lock()
invoke = SoapAdapter.SoapStubAdapter.InvokeMethod
def counted(self, mo, info, *a, **k):
    with lock:
        calls[info.wsdlName] += 1
    return invoke(self, mo, info, *a, **k)
SoapAdapter.SoapStubAdapter.InvokeMethod = counted
atexit.register(lambda: open(out, "w").write(json.dumps(calls)))
from vmaccel.cli.app import run
sys.exit(run())
"""


def wait4(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run a child; its wall and CPU seconds, peak RSS (MiB) and stdout. Raises on failure."""
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
        raise RuntimeError(f"{' '.join(argv[:6])} ... exited {code}:\n{errors[-3000:]}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
            "rss_mib": ru.ru_maxrss / 1024, "stdout": text}  # fmt: skip


def backup_run(
    bb: BenchBed, repo: Path, args: argparse.Namespace, profile: Path | None = None
) -> dict[str, Any]:
    """One ``vmaccel backup`` child over every VM of the bed; the figures of one run. With
    ``profile``, the child runs under py-spy (if installed) writing collapsed stacks there."""
    counter = bb.work / "soap-calls"
    cmd = ["backup", "--repo", str(repo), "--vcenter", VCENTER, "--no-quiesce", "--json"]
    cmd += [a for name in bb.vms for a in ("--vm", name)]
    if args.parallel is not None:
        cmd += ["--parallel", str(args.parallel)]
    if args.transport == "file":  # the bed's datastores, as NFS mounts would be
        cmd += ["--transport", "file"]
        for ds, path in sorted(bb.bed.datastore_dirs.items()):
            cmd += ["--datastore-path", f"{ds}={path}"]
    argv = [PY, "-c", _COUNTED, str(counter), *cmd]
    if profile is not None:
        spy = ["record", "--format", "raw", "--rate", "200", "--threads", "-o", str(profile)]
        argv = [str(ROOT / ".venv/bin/py-spy"), *spy, "--", *argv]
    child = wait4(argv, bb.env)
    text = child["stdout"]  # py-spy adds its own lines around the report
    report = json.loads(text[text.index("{") : text.rindex("}") + 1])
    vms = report["vms"]
    calls: dict[str, int] = json.loads(counter.read_text()) if counter.exists() else {}
    failed = [v["vm"] for v in vms if v.get("error")]
    if failed:
        raise RuntimeError(f"VMs failed: {failed[:5]}")
    disks = [d for v in vms for d in v["disks"]]
    work = sum(d["duration"] for d in disks)
    wall = child["wall_s"]
    return {
        "vms": len(vms),
        "modes": sorted({d["mode"] for d in disks}),
        "wall_s": round(wall, 2),
        "disk_work_s": round(work, 2),
        "ratio": round(wall / work, 2) if work else None,
        "vms_per_min": round(len(vms) * 60 / wall, 1),
        "catalog_s": round(sum(v.get("catalog_seconds", 0.0) for v in vms), 2),
        "bytes_read_mib": round(sum(d["bytes_read"] for d in disks) / MiB, 1),
        "soap_calls": sum(calls.values()),
        "soap_by_method": dict(sorted(calls.items())),
        "cpu_s": round(child["cpu_s"], 2),
        "rss_mib": round(child["rss_mib"], 1),
        "load": os.getloadavg()[0],
    }


def day_of_changes(bb: BenchBed, change: int, seed: int) -> int:
    """Guest-write about ``change`` bytes of random 64 KiB blocks to each VM's disk 0;
    returns the bytes written over all VMs."""
    rng, written = random.Random(seed), 0
    blocks = max(1, change // (64 * KiB))
    for name in bb.vms:
        for _ in range(blocks):
            offset = rng.randrange(bb.disk_bytes // (64 * KiB)) * 64 * KiB
            bb.bed.control.guest_write(name, 0, offset, rng.randbytes(64 * KiB))
            written += 64 * KiB
    return written


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """The whole bench: bed, full run, a day of changes, incremental run."""
    with prepared(args.vms, args.disk_mib) as bb:
        repo = bb.work / "repo"
        cli(bb.env, "repo", "init", "--repo", repo)
        log(f"{len(bb.vms)} VMs ready ({bb.data_bytes / MiB:.0f} MiB of data); full run")
        prof = Path(args.profile) if args.profile else None
        full = backup_run(bb, repo, args, prof and prof.with_suffix(".full.txt"))
        log(f"full: {full['wall_s']} s, ratio {full['ratio']}; writing changes")
        changed = day_of_changes(bb, args.change_mib * MiB, 7)
        incr = backup_run(bb, repo, args, prof and prof.with_suffix(".incr.txt"))
        log(f"incremental: {incr['wall_s']} s, ratio {incr['ratio']}")
    return {
        "vms": len(bb.vms),
        "disk_mib": args.disk_mib,
        "data_mib": round(bb.data_bytes / MiB, 1),
        "changed_mib": round(changed / MiB, 1),
        "parallel": args.parallel,
        "transport": args.transport,
        "full": full,
        "incremental": incr,
        "target_ratio_max": TARGET_RATIO,
        "cores": os.cpu_count(),
    }


def show(result: dict[str, Any]) -> None:
    """The human-readable table."""
    print(
        f"{result['vms']} VMs, {result['disk_mib']} MiB disks ({result['data_mib']} MiB data),"
        f" {result['changed_mib']} MiB changed, --parallel {result['parallel'] or 'default'}"
    )
    print(
        f"{'run':12} {'wall s':>8} {'disk s':>8} {'ratio':>6} {'VMs/min':>8} "
        f"{'SOAP':>6} {'RSS MiB':>8} {'load':>5}"
    )
    for run in ("full", "incremental"):
        r = result[run]
        print(
            f"{run:12} {r['wall_s']:8.1f} {r['disk_work_s']:8.1f} {r['ratio']:6.2f} "
            f"{r['vms_per_min']:8.1f} {r['soap_calls'] or 0:6d} {r['rss_mib']:8.1f} "
            f"{r['load']:5.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vms", type=int, default=100)
    parser.add_argument("--disk-mib", type=int, default=16)
    parser.add_argument("--change-mib", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="20 VMs, 8 MiB disks")
    parser.add_argument("--transport", choices=("auto", "file"), default="auto")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", metavar="PATH", help="py-spy collapsed stacks (slower)")
    args = parser.parse_args()
    if args.quick:
        args.vms, args.disk_mib, args.change_mib = min(args.vms, 20), 8, 1
    result = bench(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        show(result)


if __name__ == "__main__":
    main()

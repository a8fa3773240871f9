#!/usr/bin/env python3
"""REST API piece of the serve benchmark: latency of the list endpoints over a big catalog.

Run by hand, never from CI::

    .venv/bin/python bench/serve_api.py [--backups 10000] [--vms 50] [--requests 200] [--json]
                                        [--dir /tmp/x]

A repository gets ``--backups`` complete backups spread over ``--vms`` VMs, written through
the catalog's own writer (``Repository.begin_backup``: each backup an incremental image of
its VM's previous one with one changed block, committed and its manifest stored, as a real
backup is, with the metadata of a vCenter backup: ~8 KB of saved configuration), so the
index is what 10,000 real backups leave. Filling takes about 5-10 ms a
backup (every commit is durable); ``--dir`` keeps the repository for later runs, which then
skip filling.

Then :func:`vmaccel.api.server.run` serves it on 127.0.0.1 and one keep-alive HTTPS client
asks each list endpoint ``--requests`` times. Figures per endpoint: p50, p99 and max in ms,
and p99 as a ratio to the p99 of ``/health`` measured in the same run (the HTTPS + framework
floor). Target of the serve issue: p99 of the list endpoints under 100 ms at 10,000 backups.

``bench/bench_serve.py`` (the daemon's bench) imports :func:`fill_catalog` and
:func:`measure` to report these figures beside its own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmaccel.api.app import ApiSettings
from vmaccel.api.server import ServerInfo, run
from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.service import tokens
from vmaccel.service.context import Context

BLOCK = 64 * 1024
DISK = 64 * BLOCK  # 4 MiB disks: the catalog's rows, not the data, are under test
# What a vCenter backup's metadata weighs: the saved VM configuration (~8 KB of XML).
CONFIG_XML = "<obj xsi:type='VirtualMachineConfigInfo'>" + "<device>x</device>" * 400 + "</obj>"


def fill_catalog(repo: Path, backups: int, vms: int) -> float:
    """Create ``repo`` with ``backups`` complete backups over ``vms`` VMs (a kept repository
    with as many already is reused); returns the seconds spent filling."""
    start = time.perf_counter()
    if not (repo / "config").exists():
        Repository.init(repo, RepositoryConfig(block_size=BLOCK))
    with Repository.open(repo, lease="backup") as r:
        have = len(r.backups())
        for n in range(have, backups):
            vm = f"vm{n % vms:03d}"
            parent = r.latest_images(vm, disks=["disk0"]).get("disk0")
            meta = {"consistency": "crash-consistent", "config_xml": CONFIG_XML,
                    "instance_uuid": f"5003-{n % vms:04d}", "api_version": "8.0.2.0"}  # fmt: skip
            with r.begin_backup(vm, meta) as w:
                img = w.image_writer("disk0", DISK, parent)
                block = (n // vms) % (DISK // BLOCK)
                img.write(block * BLOCK, n.to_bytes(8, "little") * (BLOCK // 8))
                w.finish_image("disk0", img, parent, meta={"mode": "incremental"})
                w.commit()
    return time.perf_counter() - start


ENDPOINTS = (
    "/health",
    "/vms",
    "/backups?limit=100",
    "/backups?limit=100&offset=5000",
    "/backups?vm=vm007&limit=100",
    "/vms/vm007/restore-points?limit=50",
    "/restores",
    "/jobs?limit=50",
    "/policies",
    "/tokens",
)


@contextmanager
def serving(ctx: Context) -> Iterator[ServerInfo]:
    stop, found = threading.Event(), []
    ready = threading.Event()

    def ready_now(info: ServerInfo) -> None:
        found.append(info)
        ready.set()

    thread = threading.Thread(
        target=run,
        args=(ctx, "127.0.0.1:0"),
        kwargs={"stop": stop, "on_ready": ready_now, "settings": ApiSettings()},
        daemon=True,
    )
    thread.start()
    if not ready.wait(60):
        raise RuntimeError("the API server did not start")
    try:
        yield found[0]
    finally:
        stop.set()
        thread.join(30)


def measure(ctx: Context, count: int) -> dict[str, Any]:
    """Latencies (ms) of :data:`ENDPOINTS` against a server over ``ctx``'s repository."""
    secret = tokens.create_token(ctx, "admin", "bench").secret
    out: dict[str, Any] = {}
    with serving(ctx) as info, requests.Session() as s:
        s.trust_env = False
        s.verify = str(info.certificate)
        s.headers["Authorization"] = f"Bearer {secret}"
        for path in ENDPOINTS:
            times = []
            for _ in range(count):
                t = time.perf_counter()
                got = s.get(info.url + "/api/v1" + path, timeout=60)
                times.append((time.perf_counter() - t) * 1000)
                if got.status_code != 200:
                    raise RuntimeError(f"{path}: {got.status_code} {got.text[:200]}")
            times.sort()
            out[path] = {
                "p50_ms": statistics.median(times),
                "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))],
                "max_ms": times[-1],
            }
    floor = out["/health"]["p99_ms"]
    for figures in out.values():
        figures["p99_vs_health"] = figures["p99_ms"] / floor if floor else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backups", type=int, default=10_000)
    parser.add_argument("--vms", type=int, default=50)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--dir", type=Path, help="keep the repository here (reused later)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="vmaccel-bench-api-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        repo = base / "repo"
        fill_s = fill_catalog(repo, args.backups, args.vms)
        ctx = Context(repo=repo, config_dir=base / "config")
        figures = measure(ctx, args.requests)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    doc = {"backups": args.backups, "vms": args.vms, "fill_s": fill_s, "endpoints": figures}
    if args.json:
        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return
    print(f"{args.backups} backups of {args.vms} VMs (filled in {fill_s:.1f} s)")
    print(f"{'endpoint':42} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'p99/health':>10}")
    for path, f in figures.items():
        ratio = f["p99_vs_health"]
        print(f"{path:42} {f['p50_ms']:8.1f} {f['p99_ms']:8.1f} {f['max_ms']:8.1f} {ratio:10.1f}")


if __name__ == "__main__":
    main()

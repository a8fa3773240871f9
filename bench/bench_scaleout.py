#!/usr/bin/env python3
"""Scale-out benchmark: object storage, backup proxies and the PostgreSQL catalog, each
measured against its single-machine baseline in the same run. Issue 15's figures.

Run by hand, never from CI (``bench/README.md`` explains every figure)::

    .venv/bin/python bench/bench_scaleout.py [--quick] [--json] [--keep] [--image [PATH]]
                                             [--only store,proxies,catalog]

One PostgreSQL 15 server (``tests/catalog/pgserver.py``: Debian's binaries as the
``postgres`` user, a loopback port, password through ``PGPASSWORD``) serves every part; a
SeaweedFS ``weed mini`` (``bench_s3.seaweed``) is the S3 endpoint of part 1. Each part is a
child process (its own peak RSS), which runs its own children in turn:

1. ``scaleout_store.py``: backup and restore of one image into directory / S3 stores with
   SQLite / PostgreSQL catalogs; S3 over directory MB/s (target >= 0.8).
2. ``scaleout_proxies.py``: a 12-VM policy run on the vCenter bed with 1 and with 3 backup
   proxies (``vmaccel worker --max-jobs 2``); VMs per minute and the speed-up.
3. ``scaleout_catalog.py``, once per engine: chunk inserts (dedup path), chunk lookups,
   backup list pages, job rows; PostgreSQL over SQLite ops/s.

Scratch data lives in ``/var/tmp/vmaccel-bench/scaleout-*`` and goes at the end unless
``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from scaleout_common import BENCH_DIR, PY, ROOT, child_pid, load_avg, log, rounded, wait4

from tests.catalog import pgserver

PARTS = ("store", "proxies", "catalog")
HERE = ROOT / "bench"


def part(script: str, *args: str | Path) -> dict[str, Any]:
    """Run ``bench/SCRIPT ARGS`` as a child; its JSON with its own wall, CPU and peak RSS."""
    run = wait4([PY, str(HERE / script), *map(str, args)])
    doc: dict[str, Any] = json.loads(run.pop("stdout"))
    doc["process"] = run
    return doc


def servers_arg(pids: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in pids.items())


def store_part(
    args: argparse.Namespace, work: Path, pg: str, pids: dict[str, int]
) -> dict[str, Any]:
    from bench_s3 import seaweed

    (work / "weed").mkdir()
    image = ["--image", args.image] if args.image else ["--size-mib", str(args.size_mib)]
    image += ["--rounds", str(args.rounds)]
    with seaweed(work / "weed") as endpoint:
        log(f"part 1: S3 ({endpoint}) against the directory store")
        servers = servers_arg({"weed": child_pid("weed"), **pids})
        return part("scaleout_store.py", "--work", work / "store", "--endpoint", endpoint,
                    "--pg", pg, "--servers", servers, *image)  # fmt: skip


def proxies_part(
    args: argparse.Namespace, work: Path, pg: str, pids: dict[str, int]
) -> dict[str, Any]:
    log("part 2: 1 and 3 backup proxies on the vCenter bed")
    return part("scaleout_proxies.py", "--work", work / "proxies", "--pg", pg,
                "--disk-mib", str(args.disk_mib), "--servers", servers_arg(pids))  # fmt: skip


def catalog_part(
    args: argparse.Namespace, work: Path, server: Any, pids: dict[str, int]
) -> dict[str, Any]:
    sizes = ["--chunks", str(args.chunks), "--lookups", str(args.lookups),
             "--backups", str(args.backups), "--queries", str(args.queries),
             "--jobs", str(args.jobs)]  # fmt: skip
    log("part 3: catalog operations, SQLite then PostgreSQL")
    engines = {
        "sqlite": part("scaleout_catalog.py", "--engine", "sqlite", "--work", work / "sqlite",
                       *sizes),
        "postgresql": part("scaleout_catalog.py", "--engine", "postgresql", "--url",
                           server.database(), "--servers", servers_arg(pids), *sizes),
    }  # fmt: skip
    s, p = engines["sqlite"]["ops"], engines["postgresql"]["ops"]
    return {
        "engines": engines,
        "ratio_pg_over_sqlite": {op: p[op]["ops_per_s"] / s[op]["ops_per_s"] for op in s},
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every part asked for, against one PostgreSQL server; the JSON document."""
    doc: dict[str, Any] = {"quick": args.quick, "cpu_count": os.cpu_count(),
                           "load_avg_start": load_avg(), "parts": {}}  # fmt: skip
    server = pgserver.start()
    try:
        os.environ["PGPASSWORD"] = pgserver.PASSWORD
        for name in ("PGSERVICE", "PGSERVICEFILE", "PGPASSFILE", "PGHOST", "PGPORT", "PGUSER"):
            os.environ.pop(name, None)
        pg = server.url()
        pids = {"postgres": int((server.root / "data/postmaster.pid").read_text().split()[0])}
        if "store" in args.only:
            doc["parts"]["store"] = store_part(args, work, pg, pids)
        if "proxies" in args.only:
            doc["parts"]["proxies"] = proxies_part(args, work, pg, pids)
        if "catalog" in args.only:
            doc["parts"]["catalog"] = catalog_part(args, work, server, pids)
    finally:
        server.stop()
    doc["load_avg_end"] = load_avg()
    return doc


def store_lines(doc: dict[str, Any]) -> list[str]:
    img = doc["image"]
    what = "generated" if img["generated"] else img["path"]
    lines = [f"1. backup/restore of a {img['size_mib']:.0f} MiB image ({what}), MB/s; peak "
             f"RSS, CPU s of each child and of weed; load {doc['load_avg_start']}"]  # fmt: skip
    for name, c in doc["configs"].items():
        b, r = c["backup"], c["restore"]
        weed = [x["server_cpu_s"].get("weed", 0.0) for x in (b, r)]
        lines.append(f"   {name:10} backup {b['MBps']:6.1f} ({b['wall_s']:4.1f} s, "
                     f"{b['rss_mib']:4.0f} MiB, cpu {b['cpu_s']:4.1f} weed {weed[0]:4.1f})  "
                     f"restore {r['MBps']:6.1f} ({r['wall_s']:4.1f} s, {r['rss_mib']:4.0f} MiB, "
                     f"cpu {r['cpu_s']:4.1f} weed {weed[1]:4.1f})")  # fmt: skip
    r = doc.get("ratios", {})
    for name in doc["configs"]:
        if f"backup_{name}_over_dir" in r:
            b, rs = f"backup_{name}_over_dir", f"restore_{name}_over_dir"
            lines.append(f"   {name:10} / dir-sqlite: backup {r[b]:4.2f} (inner "
                         f"{r[b + '_inner']:4.2f}), restore {r[rs]:4.2f} (inner "
                         f"{r[rs + '_inner']:4.2f})")  # fmt: skip
    return lines


def proxies_lines(doc: dict[str, Any]) -> list[str]:
    lines = [
        f"2. policy run of {doc['vms']} VMs ({doc['disk_mib']} MiB disks, "
        f"{doc['data_mib']:.0f} MiB of data), workers --max-jobs {doc['max_jobs']}"
    ]
    for name, r in doc["runs"].items():
        rss = [round(p["rss_mib"]) for p in r["worker_procs"]]
        lines.append(f"   {name}: {r['wall_s']:6.1f} s, {r['vms_per_min']:5.1f} VMs/min, "
                     f"load {r['load_avg_start']}; VMs by worker {r['vms_by_worker']}; worker "
                     f"peak RSS {rss} MiB")  # fmt: skip
    if "ratio_speedup" in doc:
        lines.append(
            f"   speed-up {doc['ratio_speedup']:.2f}x with "
            f"{doc['ratio_workers']:.0f}x the workers on {doc['cpu_count']} cores"
        )
    return lines


def catalog_lines(doc: dict[str, Any]) -> list[str]:
    s, p = doc["engines"]["sqlite"], doc["engines"]["postgresql"]
    lines = [f"3. catalog ops/s (N={s['chunks']} chunks, K={s['backups']} backups); peak RSS "
             f"sqlite {s['process']['rss_mib']:.0f} MiB, postgresql "
             f"{p['process']['rss_mib']:.0f} MiB (client side)"]  # fmt: skip
    for op, ratio in doc["ratio_pg_over_sqlite"].items():
        lines.append(f"   {op:22} sqlite {s['ops'][op]['ops_per_s']:10.0f}  postgresql "
                     f"{p['ops'][op]['ops_per_s']:10.0f}  ratio {ratio:5.2f}")  # fmt: skip
    return lines


def table(doc: dict[str, Any]) -> list[str]:
    """The report for people."""
    lines = [
        f"scale-out bench{' (--quick)' if doc['quick'] else ''}: {doc['cpu_count']} cores,"
        f" load {doc['load_avg_start']} at the start, {doc['load_avg_end']} at the end"
    ]
    parts = doc["parts"]
    for name, render in (("store", store_lines), ("proxies", proxies_lines),
                         ("catalog", catalog_lines)):  # fmt: skip
        if name in parts:
            lines += render(parts[name])
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a short try (~3 min)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--only", default=",".join(PARTS), help="parts, comma-separated")
    p.add_argument("--image", type=Path, nargs="?", const=BENCH_DIR / "day0-4g.img",
                   help="back up this raw image (alone: backup_images.py's 4 GiB day0) "
                   "instead of a generated one")  # fmt: skip
    p.add_argument("--size-mib", type=int, help="the generated image (1024; --quick 256)")
    p.add_argument("--rounds", type=int, help="store rounds (2; --quick or --image 1)")
    p.add_argument("--disk-mib", type=int, help="each bed VM's disk (128; --quick 32)")
    p.add_argument("--chunks", type=int, help="catalog: chunks offered (200000; --quick 20000)")
    p.add_argument("--lookups", type=int, help="catalog: chunk lookups (20000; --quick 5000)")
    p.add_argument("--backups", type=int, help="catalog: backups indexed (10000; --quick 2000)")
    p.add_argument("--queries", type=int, help="catalog: queries per page kind (200; 50)")
    p.add_argument("--jobs", type=int, help="catalog: job rows (500; --quick 100)")
    args = p.parse_args(argv)
    args.only = [x for x in args.only.split(",") if x]
    if unknown := set(args.only) - set(PARTS):
        p.error(f"--only takes {','.join(PARTS)}, not {','.join(sorted(unknown))}")
    if args.image and not args.image.is_file():
        p.error(f"{args.image} does not exist (bench/backup_images.py builds the 4 GiB one)")
    if args.rounds is None:
        args.rounds = 1 if args.quick or args.image else 2
    defaults = {"size_mib": (1024, 256), "disk_mib": (128, 32), "chunks": (200_000, 20_000),
                "lookups": (20_000, 5_000), "backups": (10_000, 2_000), "queries": (200, 50),
                "jobs": (500, 100)}  # fmt: skip
    for key, (full, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="scaleout-", dir=BENCH_DIR))
    log(f"scratch in {work}")
    with ExitStack() as stack:
        if not args.keep:
            stack.callback(shutil.rmtree, work, ignore_errors=True)
        doc = rounded(run(args, work))
    if args.json:
        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print("\n".join(table(doc)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

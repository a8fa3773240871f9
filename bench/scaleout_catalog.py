#!/usr/bin/env python3
"""Scale-out bench, part 3: catalog operations through the index seam on one engine, the
embedded SQLite index (``vmaccel.catalog.index.Index``) or the PostgreSQL one
(``vmaccel.catalog.index.postgres.PgIndex``). Run once per engine, each in its own process
(its own peak RSS); ``bench_scaleout.py`` puts the two side by side.

Operations, in this order, on a new empty catalog; ``ops_per_s`` of each:

* ``chunk_insert``: N chunks offered in batches of B as a backup's pack writer does: one
  ``existing_chunks`` query per batch (the dedup check; a quarter of each batch after the
  first are ids stored already), then one write transaction ``add_pack`` with the new ones.
  Ops are chunks offered.
* ``chunk_lookup``: ``chunk(id)`` of L random stored ids, one query each (``load``);
  ``chunk_lookup_batched``: ``chunk_locations`` of the same ids in batches of 256 (a
  restore's ``load_many``); ops are ids.
* ``backup_page_*``: with K complete backups of 50 VMs indexed (one transaction, not timed),
  Q queries of one page of 50: newest first at offset 0, at offset K/2, and one VM's.
* ``job_write_read``: J times: ``add_job``, ``claim_job``, ``add_log``, ``finish_job`` (four
  write transactions, as the runner makes them) and one ``job`` read. Ops are jobs.

The PostgreSQL server of the bench runs with ``fsync=off`` and ``synchronous_commit=off``
(tests/catalog/pgserver.py): its write figures are an upper bound; SQLite syncs as it would.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scaleout_common import emit, load_avg, parse_servers, server_cpu

from vmaccel.catalog.index import BackupMeta, BackupRow, CatalogIndex, Index
from vmaccel.catalog.index.postgres import PgIndex
from vmaccel.catalog.pack import PackEntry

PAGE = 50


SERVERS: dict[str, int] = {}  # name -> PID of the database server (``--servers``)


def timed(count: int, fn: Callable[[], None]) -> dict[str, Any]:
    """Run ``fn`` once; ``count`` ops over its wall seconds, this process's CPU seconds and
    the server's (PostgreSQL: its backend does the work the SQLite engine does in-process)."""
    before, cpu = server_cpu(SERVERS), time.process_time()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    after, cpu = server_cpu(SERVERS), time.process_time() - cpu
    return {"ops": count, "seconds": seconds, "ops_per_s": count / seconds, "cpu_s": cpu,
            "server_cpu_s": {k: after[k] - before[k] for k in after}}  # fmt: skip


def insert_chunks(index: CatalogIndex, n: int, batch: int, rng: random.Random) -> list[bytes]:
    """Offer ``n`` chunks in batches (see the module docstring); the stored ids."""
    stored: list[bytes] = []
    offered = 0
    while offered < n:
        size = min(batch, n - offered)
        old = rng.sample(stored, min(len(stored), size // 4))
        ids = old + [rng.randbytes(32) for _ in range(size - len(old))]
        known = index.existing_chunks(ids)
        new = [i for i in ids if i not in known]
        entries = [PackEntry(cid, 1, 0, k * 40_000, 40_000, 65_536, k) for k, cid in
                   enumerate(new)]  # fmt: skip
        with index.writing():
            index.add_pack(f"packs/{rng.randbytes(16).hex()}", 40_000 * len(new), time.time(),
                           entries)  # fmt: skip
        stored += new
        offered += size
    return stored


def lookups(index: CatalogIndex, ids: list[bytes]) -> dict[str, Any]:
    """Single and batched reads of ``ids`` (all stored)."""

    def single() -> None:
        for cid in ids:
            if index.chunk(cid) is None:
                raise RuntimeError("a stored chunk is missing")

    def batched() -> None:
        for at in range(0, len(ids), 256):
            part = ids[at : at + 256]
            if len(index.chunk_locations(part)) != len(part):
                raise RuntimeError("a stored chunk is missing")

    return {"chunk_lookup": timed(len(ids), single),
            "chunk_lookup_batched": timed(len(ids), batched)}  # fmt: skip


def backup_pages(index: CatalogIndex, k: int, q: int) -> dict[str, Any]:
    """Index ``k`` backups of 50 VMs, then time ``q`` page queries of three kinds."""
    start = time.perf_counter()
    with index.writing():
        for n in range(k):
            at = 1.7e9 + n * 600.0
            index.restore_backup(BackupRow(n + 1, f"u{n}", f"vm{n % 50:02d}", at, at + 60,
                                           "complete", BackupMeta()))  # fmt: skip
    setup = time.perf_counter() - start

    def page(vm: str | None, offset: int) -> Callable[[], None]:
        def go() -> None:
            for _ in range(q):
                total, rows = index.backup_page(vm, None, None, True, offset, PAGE)
                if not rows or total < len(rows):
                    raise RuntimeError("an empty backup page")

        return go

    return {"backups_indexed_s": setup,
            "backup_page_first": timed(q, page(None, 0)),
            "backup_page_middle": timed(q, page(None, k // 2)),
            "backup_page_one_vm": timed(q, page("vm07", 0))}  # fmt: skip


def jobs(index: CatalogIndex, j: int) -> dict[str, float]:
    """``j`` job rows written (four transactions each) and read back."""

    def go() -> None:
        for n in range(j):
            now = time.time()
            with index.writing():
                job = index.add_job("policy", "bench", "manual", None, now)
            with index.writing():
                index.claim_job(job, "bench:1", now)
            with index.writing():
                index.add_log(job, None, now, "info", f"run {n} started")
            with index.writing():
                index.finish_job(job, "succeeded", now, {"vms": 12})
            row = index.job(job)
            if row is None or row.state != "succeeded":
                raise RuntimeError("a job row did not read back")

    return timed(j, go)


def open_index(args: argparse.Namespace) -> CatalogIndex:
    index: CatalogIndex
    if args.engine == "postgresql":
        index = PgIndex(args.url, create=True)
    else:
        args.work.mkdir(parents=True, exist_ok=True)
        index = Index(args.work / "index.db", create=True)
    index.migrate()
    return index


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The engine's JSON document (see the module docstring)."""
    rng = random.Random(7)
    doc: dict[str, Any] = {"engine": args.engine, "load_avg_start": load_avg(),
                           "chunks": args.chunks, "batch": args.batch, "lookups": args.lookups,
                           "backups": args.backups, "page_queries": args.queries,
                           "jobs": args.jobs}  # fmt: skip
    index = open_index(args)
    try:
        stored: list[bytes] = []
        ops: dict[str, Any] = {"chunk_insert": timed(args.chunks, lambda: stored.extend(
            insert_chunks(index, args.chunks, args.batch, rng)))}  # fmt: skip
        ops.update(lookups(index, rng.sample(stored, min(args.lookups, len(stored)))))
        pages = backup_pages(index, args.backups, args.queries)
        doc["backups_indexed_s"] = pages.pop("backups_indexed_s")
        ops.update(pages)
        ops["job_write_read"] = jobs(index, args.jobs)
    finally:
        index.close()
    doc["ops"] = ops
    if args.engine == "sqlite":
        doc["index_db_mib"] = os.path.getsize(args.work / "index.db") / (1 << 20)
    doc["load_avg_end"] = load_avg()
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", choices=("sqlite", "postgresql"), required=True)
    p.add_argument("--url", help="postgresql://... an empty database (PGPASSWORD set)")
    p.add_argument("--work", type=Path, help="directory of the SQLite index.db")
    p.add_argument("--servers", type=parse_servers, default={},
                   help="postgres=PID: the server's CPU is measured too")  # fmt: skip
    p.add_argument("--chunks", type=int, default=200_000, help="N chunks offered")
    p.add_argument("--batch", type=int, default=1024, help="B chunks per batch (one pack)")
    p.add_argument("--lookups", type=int, default=20_000, help="L chunk lookups")
    p.add_argument("--backups", type=int, default=10_000, help="K backups indexed")
    p.add_argument("--queries", type=int, default=200, help="Q queries of each page kind")
    p.add_argument("--jobs", type=int, default=500, help="J job rows")
    args = p.parse_args(argv)
    if (args.engine == "postgresql") != bool(args.url) or (args.engine == "sqlite") != bool(
        args.work
    ):
        p.error("postgresql needs --url, sqlite --work (and only that)")
    SERVERS.update(args.servers)
    return emit(run(args), 4)


if __name__ == "__main__":
    sys.exit(main())

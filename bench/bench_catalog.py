#!/usr/bin/env python3
# ruff: noqa: E501  (the human table is wide on purpose)
"""Catalog benchmark: write, synthetic full, read and block-size figures on this machine.

Run by hand, never from CI (``bench/README.md`` explains every figure)::

    .venv/bin/python bench/bench_catalog.py [--quick] [--json] [--dir /tmp/x] [--only write,read]

(Named ``bench_catalog`` rather than ``catalog``: run as a script, a ``vmaccel.catalog.py`` here would
shadow the ``catalog`` package it measures.)

Each phase runs in its own subprocess so that its peak RSS (``ru_maxrss``) is its own. Every
throughput is compared with a baseline measured in the same process: plain blake3 + zstd on
the same bytes (write), or reading a raw file of the same image (read).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pagecache
from catalog_table import table
from workload import (
    UNIT,
    Content,
    GiB,
    KiB,
    MiB,
    TiB,
    baseline_full,
    baseline_hash,
    baseline_threads,
    baseline_threads_stored,
    load_avg,
    rss_mib,
    timed,
    timed_cpu,
)

from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.catalog.index import ImageRow, ImageStats
from vmaccel.catalog.pack import KIND_NODE

PHASES = ("write", "rewrite", "synth", "read", "random", "blocksize")
IMAGE = "generated: Content (synthetic: ~43 % zero, ~20 % random, ~37 % text; no OS)"


# -- helpers ---------------------------------------------------------------------------------


def node_bytes(repo: Repository) -> tuple[int, int, int]:
    """(map nodes, their plaintext bytes, their stored bytes) in the repository."""
    rows = list(repo.index.chunks(kind=KIND_NODE))
    return len(rows), sum(r.raw_len for r in rows), sum(r.stored_len for r in rows)


def db_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("index.db*"))


def full_backup(repo: Repository, content: Content, disk: str, vm: str = "vm") -> ImageRow:
    with repo.begin_backup(vm) as bw:
        w = bw.image_writer(disk, content.size)
        for off, data in content.chunks():
            w.write(off, data)
        bw.finish_image(disk, w)
        row = bw.commit()
    return repo.image(row, disk)


# -- phases (each runs in its own process) ---------------------------------------------------


def phase_write(a: argparse.Namespace) -> dict[str, Any]:
    load = load_avg()
    content = Content(a.size)
    gen_s, _ = timed(lambda: sum(len(d) for _, d in content.chunks()))
    bs = a.block
    base_s, base_cpu, base_stored = timed_cpu(lambda: baseline_full(content, bs))
    par_s, par_cpu, _ = timed_cpu(lambda: baseline_threads(content, bs, 2))
    store_path = str(a.dir / "reference-store")
    sto_s, sto_cpu, _ = timed_cpu(lambda: baseline_threads_stored(content, bs, 2, store_path))
    repo_path = a.dir / "repo"
    shutil.rmtree(repo_path, ignore_errors=True)
    Repository.init(repo_path, RepositoryConfig(block_size=bs))
    with Repository.open(repo_path, write=True) as repo:
        write_s, write_cpu, img = timed_cpu(lambda: full_backup(repo, content, "disk0"))
        nodes = node_bytes(repo)
    size = content.size
    return {
        "load_avg": load,
        "image_bytes": size,
        "block_size": bs,
        "generate_s": gen_s,
        "baseline_s": base_s,
        "baseline_net_GBps": size / (base_s - gen_s) / 1e9,
        "write_s": write_s,
        "write_net_GBps": size / (write_s - gen_s) / 1e9,
        "write_gross_GBps": size / write_s / 1e9,
        "ratio_write_vs_baseline": (base_s - gen_s) / (write_s - gen_s),
        "baseline2_s": par_s,
        "baseline2_cpu_s": par_cpu,
        "baseline2_net_GBps": size / (par_s - gen_s) / 1e9,
        "ratio_baseline2_vs_baseline": (base_s - gen_s) / (par_s - gen_s),
        "ratio_write_vs_baseline2": (par_s - gen_s) / (write_s - gen_s),
        "baseline2_stored_s": sto_s,
        "baseline2_stored_cpu_s": sto_cpu,
        "ratio_write_vs_baseline2_stored": (sto_s - gen_s) / (write_s - gen_s),
        "baseline_cpu_s": base_cpu,
        "write_cpu_s": write_cpu,
        "stored_bytes": img.stats.stored_bytes,
        "baseline_stored_bytes": base_stored,
        "zero_blocks": img.stats.zero_blocks,
        "new_chunks": img.stats.new_chunks,
        "map_nodes": nodes[0],
        "map_node_bytes": nodes[1],
        "packs_bytes": sum(
            p.stat().st_size for p in (repo_path / "packs").rglob("*") if p.is_file()
        ),
        "index_db_bytes": db_size(repo_path),
        "rss_MiB": rss_mib(),
    }


def phase_rewrite(a: argparse.Namespace) -> dict[str, Any]:
    """Incremental without CBT: the whole image written again as a child of the full backup.

    Every block is zero-checked and hashed; none is new, so nothing is compressed or stored.
    Baseline: zero check + blake3 of every block of the same stream on one thread. Both sides
    are *gross* (generating the stream included): the essential work is about as cheap as
    generating, so net figures would be the small difference of two noisy times.
    """
    load = load_avg()
    content = Content(a.size)
    gen_s, _ = timed(lambda: sum(len(d) for _, d in content.chunks()))
    base_s, base_cpu, _ = timed_cpu(lambda: baseline_hash(content, a.block))
    repo_path = a.dir / "repo"
    with Repository.open(repo_path, write=True) as repo:
        parent = repo.image(repo.backups(vm="vm")[0], "disk0")
        n0 = node_bytes(repo)

        def rewrite() -> ImageStats:
            with repo.begin_backup("vm") as bw:
                w = bw.image_writer("disk0", content.size, parent=parent)
                for off, data in content.chunks():
                    w.write(off, data)
                bw.finish_image("disk0", w, parent)
                row = bw.commit()
            return repo.image(row, "disk0").stats

        secs, cpu, stats = timed_cpu(rewrite)
        n1 = node_bytes(repo)
    size = content.size
    return {
        "load_avg": load,
        "image_bytes": size,
        "generate_s": gen_s,
        "baseline_s": base_s,
        "baseline_cpu_s": base_cpu,
        "baseline_gross_GBps": size / base_s / 1e9,
        "rewrite_s": secs,
        "rewrite_cpu_s": cpu,
        "rewrite_gross_GBps": size / secs / 1e9,
        "ratio_rewrite_vs_baseline": base_s / secs,
        "new_chunks": stats.new_chunks,
        "stored_bytes": stats.stored_bytes,
        "new_nodes": n1[0] - n0[0],
        "rss_MiB": rss_mib(),
    }


def _changed_blocks(blocks: int, count: int, seed: int) -> list[int]:
    return sorted(random.Random(seed).sample(range(blocks), count))


def _incremental(repo_path: Path, parent_id: int, changed_bytes: int, seed: int) -> dict[str, Any]:
    """One synthetic full from image ``parent_id`` with ``changed_bytes`` scattered changes.

    The SQLite growth is measured with the repository closed (WAL checkpointed into index.db).
    """
    db0 = db_size(repo_path)
    with Repository.open(repo_path, write=True) as repo:
        parent = repo.image_by_id(parent_id)
        assert parent is not None
        bs = parent.block_size
        changed = _changed_blocks(parent.size // bs, max(changed_bytes // bs, 1), seed)
        src = Content(bs * 4, seed=seed)  # content for the changed blocks, all new
        n0 = node_bytes(repo)

        def run() -> ImageStats:
            with repo.begin_backup("vm") as bw:
                w = bw.image_writer(parent.disk, parent.size, parent=parent)
                for b in changed:
                    w.write(b * bs, src.read(0, bs, salt=b + 1) if bs >= UNIT else b"x" * bs)
                bw.finish_image(parent.disk, w, parent)
                row = bw.commit()
            return repo.image(row, parent.disk).stats

        secs, stats = timed(run)
        n1 = node_bytes(repo)
    return {
        "changed_bytes": len(changed) * bs,
        "changed_blocks": len(changed),
        "seconds": secs,
        "new_nodes": n1[0] - n0[0],
        "node_bytes": n1[1] - n0[1],
        "node_stored": n1[2] - n0[2],
        "sqlite_growth": db_size(repo_path) - db0,
        "stored_bytes": stats.stored_bytes,
    }


def _sparse_full(repo_path: Path, size: int, data_bytes: int) -> int:
    """A sparse full of ``size`` bytes with ``data_bytes`` of data in 64 MiB clusters."""
    content = Content(64 * MiB, seed=7)
    clusters = max(data_bytes // (64 * MiB), 1)
    step = size // clusters
    with Repository.open(repo_path, write=True) as repo:
        with repo.begin_backup("big") as bw:
            w = bw.image_writer("big0", size)
            for c in range(clusters):
                for off, data in content.chunks():
                    w.write(c * step + off, data)
            bw.finish_image("big0", w)
            row = bw.commit()
        return repo.image(row, "big0").id


def phase_synth(a: argparse.Namespace) -> dict[str, Any]:
    repo_path = a.dir / "repo"
    with Repository.open(repo_path) as repo:
        base = repo.image(repo.backups(vm="vm")[0], "disk0")
    out: dict[str, Any] = {"image_bytes": base.size, "cases": []}
    big_size = a.big_size
    big_id = None
    if big_size:
        t, big_id = timed(lambda: _sparse_full(repo_path, big_size, a.big_data))
        out.update(big_bytes=big_size, big_data_bytes=a.big_data, big_full_s=t)
    zero = _incremental(repo_path, base.id, 0, 99)  # still one block: the minimum
    out["nochange_4g"] = zero
    for pct in (0.1, 1.0, 10.0):
        cb = int(base.size * pct / 100)
        small = _incremental(repo_path, base.id, cb, int(pct * 10))
        case: dict[str, Any] = {"pct": pct, "small": small}
        if big_id is not None:
            big = _incremental(repo_path, big_id, cb, int(pct * 10) + 1)
            case["big"] = big
            case["ratio_time"] = big["seconds"] / small["seconds"]
            case["ratio_node_bytes"] = big["node_bytes"] / max(small["node_bytes"], 1)
        out["cases"].append(case)
    out["rss_MiB"] = rss_mib()
    return out


def phase_read(a: argparse.Namespace) -> dict[str, Any]:
    load = load_avg()
    repo_path = a.dir / "repo"
    raw = a.dir / "raw.img"
    content = Content(a.size)
    with open(raw, "wb") as f:
        for _, data in content.chunks():
            f.write(data)
    buf = bytearray(MiB)

    def read_raw() -> int:
        n = 0
        with open(raw, "rb", buffering=0) as f:
            while k := f.readinto(buf):
                n += k
        return n

    read_raw()  # warm: both sides read from the page cache
    raw_s, _ = timed(read_raw)
    with Repository.open(repo_path) as repo:
        img = repo.image(repo.backups(vm="vm")[0], "disk0")

        def read_img() -> int:
            n = 0
            with repo.open_image(img) as r:
                while k := r.readinto(buf):
                    n += k
            return n

        img_s, img_cpu, n = timed_cpu(read_img)
    raw.unlink()
    assert n == a.size
    return {
        "load_avg": load,
        "image_cpu_s": img_cpu,
        "image_bytes": n,
        "raw_s": raw_s,
        "raw_GBps": n / raw_s / 1e9,
        "image_s": img_s,
        "image_GBps": n / img_s / 1e9,
        "ratio_raw_vs_image": raw_s and img_s / raw_s,
        "rss_MiB": rss_mib(),
    }


def preads(reader: Any, offsets: list[int], evict: list[int] | None = None) -> dict[str, Any]:
    """Time 4 KiB preads at ``offsets``; with ``evict`` (descriptors of the repository's
    files) the page cache drops them before every read, which is timed alone."""
    secs = 0.0
    for o in offsets:
        if evict is not None:
            pagecache.evict(evict)
        t = time.perf_counter()
        reader.pread(o, 4096)
        secs += time.perf_counter() - t
    return {"reads": len(offsets), "seconds": secs, "reads_per_s": len(offsets) / secs}


def phase_random(a: argparse.Namespace) -> dict[str, Any]:
    """4 KiB preads at random 4 KiB-aligned offsets of the image's data extents, one thread:
    ``no_cache_cold`` evicts every repository file from the page cache before each read (each
    read timed alone), ``no_cache_warm`` and ``cache_64MiB_warm`` run with the repository
    read into the page cache first."""
    repo_path = a.dir / "repo"
    out: dict[str, Any] = {"load_avg": load_avg()}
    files = pagecache.files_under(repo_path)
    fds = pagecache.open_synced(files)
    try:
        with Repository.open(repo_path) as repo:
            img = repo.image(repo.backups(vm="vm")[0], "disk0")
            rng = random.Random(5)
            with repo.open_image(img) as r:
                data = [(o, n) for o, n, d in r.extents() if d]

            def offsets(count: int) -> list[int]:
                return [
                    o + rng.randrange(n // 4096) * 4096
                    for o, n in (data[rng.randrange(len(data))] for _ in range(count))
                ]

            with repo.open_image(img, cache_bytes=0, readahead_bytes=0) as r:
                out["no_cache_cold"] = preads(r, offsets(a.random_reads // 10), fds)
            pagecache.warm(files)
            for label, cache in (("no_cache_warm", 0), ("cache_64MiB_warm", 64 * MiB)):
                with repo.open_image(img, cache_bytes=cache, readahead_bytes=0) as r:
                    out[label] = preads(r, offsets(a.random_reads))
    finally:
        for fd in fds:
            os.close(fd)
    out["rss_MiB"] = rss_mib()
    return out


def phase_blocksize(a: argparse.Namespace) -> dict[str, Any]:
    content = Content(a.bs_size, seed=3)
    rows = []
    for bs in (64 * KiB, 256 * KiB, MiB):
        repo_path = a.dir / f"repo-bs{bs // KiB}"
        shutil.rmtree(repo_path, ignore_errors=True)
        Repository.init(repo_path, RepositoryConfig(block_size=bs))
        with Repository.open(repo_path, write=True) as repo:
            secs, img = timed(lambda: full_backup(repo, content, "disk0"))
            nodes = node_bytes(repo)
            base_id = img.id
            stored = img.stats.stored_bytes
        # a "guest" change: 0.1 % of the disk as scattered 4 KiB writes, whole blocks re-read
        writes = max(content.size // 1000 // 4096, 1)
        blocks = sorted(
            {o // bs for o in _changed_blocks(content.size // 4096, writes, 11) for o in [o * 4096]}
        )
        inc = _incremental_blocks(repo_path, base_id, blocks, bs, content)
        rows.append(
            {
                "block_size": bs,
                "write_s": secs,
                "write_GBps": content.size / secs / 1e9,
                "stored_bytes": stored,
                "map_nodes": nodes[0],
                "map_node_bytes": nodes[1],
                "inc_4k_writes": writes,
                "inc_blocks": len(blocks),
                **inc,
            }
        )
        shutil.rmtree(repo_path, ignore_errors=True)
    return {"image_bytes": content.size, "rows": rows, "rss_MiB": rss_mib()}


def _incremental_blocks(
    repo_path: Path, parent_id: int, blocks: list[int], bs: int, content: Content
) -> dict[str, Any]:
    with Repository.open(repo_path, write=True) as repo:
        parent = repo.image_by_id(parent_id)
        assert parent is not None
        n0 = node_bytes(repo)
        with repo.begin_backup("vm") as bw:
            w = bw.image_writer("disk0", parent.size, parent=parent)
            rng = random.Random(1)
            for b in blocks:  # 4 KiB of each block changed; the rest as it was is re-stored
                old = content.read(b * bs, bs)
                at = rng.randrange(bs // 4096) * 4096
                w.write(b * bs, old[:at] + rng.randbytes(4096) + old[at + 4096 :])
            bw.finish_image("disk0", w, parent)
            row = bw.commit()
        stats = repo.image(row, "disk0").stats
        n1 = node_bytes(repo)
    return {
        "inc_read_bytes": len(blocks) * bs,
        "inc_stored_bytes": stats.stored_bytes,
        "inc_node_bytes": n1[1] - n0[1],
    }


# -- driver ----------------------------------------------------------------------------------


def run_phase(a: argparse.Namespace) -> None:
    fn = {
        "write": phase_write,
        "rewrite": phase_rewrite,
        "synth": phase_synth,
        "read": phase_read,
        "random": phase_random,
        "blocksize": phase_blocksize,
    }[a.phase]
    print(json.dumps(fn(a)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="512 MiB image, small sparse disk")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--dir", type=Path, help="scratch directory (default: a new one in /tmp)")
    p.add_argument("--only", default=",".join(PHASES), help="comma-separated phases")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    a.size = a.size or (512 * MiB if a.quick else 4 * GiB)
    a.block = 64 * KiB
    a.big_size = 64 * GiB if a.quick else 2 * TiB
    a.big_data = 256 * MiB if a.quick else 2 * GiB
    a.bs_size = 256 * MiB if a.quick else GiB
    a.random_reads = 5000 if a.quick else 20000
    if a.phase:
        run_phase(a)
        return
    own = a.dir is None
    a.dir = a.dir or Path(tempfile.mkdtemp(prefix="vmaccel-bench-"))
    a.dir.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "quick": a.quick,
        "dir": str(a.dir),
        "image": IMAGE,
        "image_system": "generated",
    }
    print(f"image: {IMAGE}, {a.size / GiB:.2f} GiB", file=sys.stderr, flush=True)
    phases = [x for x in PHASES if x in a.only.split(",")]
    try:
        for ph in phases:
            cmd = [sys.executable, __file__, "--phase", ph, "--dir", str(a.dir)]
            cmd += ["--size", str(a.size)] + (["--quick"] if a.quick else [])
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            res[ph] = json.loads(out.strip().splitlines()[-1])
            if not a.json:
                ctx = {ph: res[ph], "_full": res.get("write")}
                print("\n".join(table(ctx)), flush=True)
    finally:
        if own:
            shutil.rmtree(a.dir, ignore_errors=True)
    if a.json:
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

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
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import blake3
import pagecache
import zstandard

from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.catalog.index import ImageRow
from vmaccel.catalog.pack import KIND_NODE

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
UNIT = 64 * KiB  # content is generated in 64 KiB units, in runs of RUN units of one kind
RUN = 4
WRITE_CHUNK = 4 * MiB
PHASES = ("write", "rewrite", "synth", "read", "random", "blocksize")
IMAGE = "generated: Content (synthetic: ~43 % zero, ~20 % random, ~37 % text; no OS)"


# -- deterministic, realistic content (streamed, never held whole) -----------------------------


class Content:
    """A disk image of ``size`` bytes: ~43 % zero, ~20 % random, ~37 % text/structured.

    Kinds are chosen per run of ``RUN`` units by a seeded hash, so zeros come in runs as on a
    real disk. Random and text units are slices of pools at unit-dependent byte offsets, so
    no two units are equal (nothing dedups by accident) and generating is about a memcpy.
    """

    def __init__(self, size: int, seed: int = 1) -> None:
        self.size, self.seed = size, seed
        rng = random.Random(seed)
        self._rand = rng.randbytes(64 * MiB)
        words = [
            b"GET",
            b"POST",
            b"/api/v1/orders",
            b"user=",
            b"status=200",
            b"INFO",
            b"WARN",
            b"kernel:",
            b'{"id":',
            b'"sku":"A-',
            b'"qty":',
            b"ext4-fs",
            b"\n",
        ]
        lines = []
        for i in range(200_000):
            picks = b" ".join(rng.choice(words) for _ in range(6))
            lines.append(
                b"2024-05-%02d %06d %s %d\n" % (i % 28 + 1, i, picks, rng.randrange(1 << 20))
            )
        self._text = b"".join(lines)
        self._zero = bytes(UNIT)

    def kind(self, unit: int) -> str:
        h = (
            int.from_bytes(
                blake3.blake3(
                    (unit // RUN * 2654435761 + self.seed).to_bytes(8, "little")
                ).digest()[:4],
                "little",
            )
            % 100
        )
        return "zero" if h < 43 else "random" if h < 63 else "text"

    def unit(self, u: int, salt: int = 0) -> bytes:
        kind = self.kind(u) if not salt else ("random" if u % 3 == 0 else "text")
        if kind == "zero":
            return self._zero
        pool = self._rand if kind == "random" else self._text
        off = ((u + salt * 7_777_777) * 40_503) % (len(pool) - UNIT)
        stamp = b"%016x" % (u ^ (salt << 40))
        return stamp + pool[off : off + UNIT - len(stamp)]

    def read(self, offset: int, length: int, salt: int = 0) -> bytes:
        """Image bytes ``offset .. offset+length`` (both multiples of 64 KiB)."""
        first = offset // UNIT
        return b"".join(self.unit(u, salt) for u in range(first, first + length // UNIT))

    def chunks(self, chunk: int = WRITE_CHUNK) -> Iterator[tuple[int, bytes]]:
        for off in range(0, self.size, chunk):
            yield off, self.read(off, min(chunk, self.size - off))


# -- helpers ---------------------------------------------------------------------------------


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_avg() -> float:
    """The 1-minute load average when the phase started (other work on the machine)."""
    return os.getloadavg()[0]


def timed_cpu(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result): CPU is less sensitive than wall
    to other load on the machine; CPU above wall means more than one core was busy."""
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


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


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


# -- phases (each runs in its own process) ---------------------------------------------------


def phase_write(a: argparse.Namespace) -> dict[str, Any]:
    load = load_avg()
    content = Content(a.size)
    gen_s, _ = timed(lambda: sum(len(d) for _, d in content.chunks()))
    comp = zstandard.ZstdCompressor(level=3, write_content_size=True)
    zero, bs = bytes(a.block), a.block

    def baseline() -> int:
        stored = 0
        for _, data in content.chunks():
            for p in range(0, len(data), bs):
                block = data[p : p + bs]
                if block == zero:
                    continue
                blake3.blake3(block).digest()
                stored += min(len(comp.compress(block)), len(block))
        return stored

    base_s, base_cpu, base_stored = timed_cpu(baseline)
    par_s, par_cpu, _ = timed_cpu(lambda: baseline_threads(content, bs, 2))
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
        "baseline_cpu_s": base_cpu,
        "write_cpu_s": write_cpu,
        "stored_bytes": img.stats["stored_bytes"],
        "baseline_stored_bytes": base_stored,
        "zero_blocks": img.stats["zero_blocks"],
        "new_chunks": img.stats["new_chunks"],
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
    zero, bs = bytes(a.block), a.block

    def baseline() -> None:
        for _, data in content.chunks():
            for p in range(0, len(data), bs):
                block = data[p : p + bs]
                if block != zero:
                    blake3.blake3(block).digest()

    base_s, base_cpu, _ = timed_cpu(baseline)
    repo_path = a.dir / "repo"
    with Repository.open(repo_path, write=True) as repo:
        parent = repo.image(repo.backups(vm="vm")[0], "disk0")
        n0 = node_bytes(repo)

        def rewrite() -> dict[str, int]:
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
        "new_chunks": stats["new_chunks"],
        "stored_bytes": stats["stored_bytes"],
        "new_nodes": n1[0] - n0[0],
        "rss_MiB": rss_mib(),
    }


def baseline_threads(content: Content, bs: int, threads: int) -> None:
    """The essential work of a full backup on ``threads`` threads, with nothing stored: the
    calling thread generates 4 MiB pieces, a pool zero-checks, hashes and compresses their
    blocks (at most 16 pieces in flight). On a machine with two free cores this reaches ~1.9x
    the one-thread baseline; when it does not, the cores were busy with other work."""
    local = threading.local()

    def work(data: bytes) -> None:
        comp = getattr(local, "comp", None)
        if comp is None:
            comp = local.comp = zstandard.ZstdCompressor(level=3, write_content_size=True)
        view, zero = memoryview(data), bytes(bs)
        for p in range(0, len(data), bs):
            if not data.startswith(zero, p):
                blake3.blake3(view[p : p + bs]).digest()
                comp.compress(view[p : p + bs])

    with ThreadPoolExecutor(threads) as pool:
        inflight: deque[Future[None]] = deque()
        for _, data in content.chunks():
            inflight.append(pool.submit(work, data))
            if len(inflight) >= 16:
                inflight.popleft().result()
        for fut in inflight:
            fut.result()


def _changed_blocks(blocks: int, count: int, seed: int) -> list[int]:
    return sorted(random.Random(seed).sample(range(blocks), count))


def _incremental(repo_path: Path, parent_id: int, changed_bytes: int, seed: int) -> dict[str, Any]:
    """One synthetic full from image ``parent_id`` with ``changed_bytes`` scattered changes.

    The SQLite growth is measured with the repository closed (WAL checkpointed into index.db).
    """
    db0 = db_size(repo_path)
    with Repository.open(repo_path, write=True) as repo:
        parent = repo.index.image(parent_id)
        assert parent is not None
        bs = parent.block_size
        changed = _changed_blocks(parent.size // bs, max(changed_bytes // bs, 1), seed)
        src = Content(bs * 4, seed=seed)  # content for the changed blocks, all new
        n0 = node_bytes(repo)

        def run() -> dict[str, int]:
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
        "stored_bytes": stats["stored_bytes"],
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
                secs = 0.0
                for o in offsets(a.random_reads // 10):
                    pagecache.evict(fds)
                    t = time.perf_counter()
                    r.pread(o, 4096)
                    secs += time.perf_counter() - t
                reads = a.random_reads // 10
                out["no_cache_cold"] = {
                    "reads": reads,
                    "seconds": secs,
                    "reads_per_s": reads / secs,
                }
            pagecache.warm(files)
            for label, cache in (("no_cache_warm", 0), ("cache_64MiB_warm", 64 * MiB)):
                with repo.open_image(img, cache_bytes=cache, readahead_bytes=0) as r:
                    offs = offsets(a.random_reads)
                    secs, _ = timed(lambda r=r, offs=offs: [r.pread(o, 4096) for o in offs])
                    out[label] = {
                        "reads": len(offs),
                        "seconds": secs,
                        "reads_per_s": len(offs) / secs,
                    }
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
            stored = img.stats["stored_bytes"]
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
        parent = repo.index.image(parent_id)
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
        "inc_stored_bytes": stats["stored_bytes"],
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


def table(res: dict[str, Any]) -> list[str]:
    g = lambda b: f"{b / 1e9:.2f} GB" if b >= 1e8 else f"{b / 1e6:.2f} MB"  # noqa: E731
    out = []
    if w := res.get("write"):
        out += [
            f"== write: full backup of {g(w['image_bytes'])} image, {w['block_size'] // KiB} KiB blocks  (RSS {w['rss_MiB']:.0f} MiB)",
            f"  generate content only        {w['generate_s']:7.2f} s",
            f"  baseline blake3+zstd-3 1 thr {w['baseline_s']:7.2f} s   net {w['baseline_net_GBps']:.2f} GB/s",
            f"  vmaccel full backup          {w['write_s']:7.2f} s   net {w['write_net_GBps']:.2f} GB/s (gross {w['write_gross_GBps']:.2f})",
            f"  baseline, same work 2 thr    {w['baseline2_s']:7.2f} s   net {w['baseline2_net_GBps']:.2f} GB/s"
            f"   ({w['ratio_baseline2_vs_baseline']:.2f} x 1 thr: ~1.9 when 2 cores are free)",
            f"  ratio vmaccel/baseline 2 thr {w['ratio_write_vs_baseline2']:7.2f} x",
            f"  ratio vmaccel/baseline       {w['ratio_write_vs_baseline']:7.2f} x   "
            f"(CPU {w['write_cpu_s']:.2f} s vs {w['baseline_cpu_s']:.2f} s; load avg {w['load_avg']:.1f})",
            f"  stored {g(w['stored_bytes'])} (baseline {g(w['baseline_stored_bytes'])}), {w['zero_blocks']} zero blocks, "
            f"{w['map_nodes']} map nodes = {g(w['map_node_bytes'])}, index.db {g(w['index_db_bytes'])}",
        ]
    if r := res.get("rewrite"):
        out += [
            f"== rewrite: the same image again as a child (hash compare, no CBT)  (RSS {r['rss_MiB']:.0f} MiB)",
            f"  generate content only        {r['generate_s']:7.2f} s",
            f"  baseline zero+blake3 1 thr   {r['baseline_s']:7.2f} s   gross {r['baseline_gross_GBps']:.2f} GB/s",
            f"  vmaccel rewrite              {r['rewrite_s']:7.2f} s   gross {r['rewrite_gross_GBps']:.2f} GB/s",
            f"  ratio vmaccel/baseline       {r['ratio_rewrite_vs_baseline']:7.2f} x (gross)   "
            f"(CPU {r['rewrite_cpu_s']:.2f} s vs {r['baseline_cpu_s']:.2f} s; load avg {r['load_avg']:.1f})",
            f"  new chunks {r['new_chunks']}, stored {r['stored_bytes']} B, new map nodes {r['new_nodes']}",
        ]
        if w := res.get("_full"):  # the write phase of the same run
            out.append(
                f"  rewrite vs full write        {r['rewrite_gross_GBps'] / w['write_gross_GBps']:7.2f} x faster (gross)"
            )
    if s := res.get("synth"):
        out.append(f"== synthetic full from the full backup  (RSS {s['rss_MiB']:.0f} MiB)")
        if "big_bytes" in s:
            out.append(
                f"  sparse full of {s['big_bytes'] / GiB:.0f} GiB disk with {g(s['big_data_bytes'])} data: {s['big_full_s']:.2f} s"
            )
        z = s["nochange_4g"]
        out.append(
            f"  1 block changed ({g(s['image_bytes'])} disk): {z['seconds'] * 1000:.1f} ms, {z['new_nodes']} nodes, {z['node_bytes']} B"
        )
        out.append(
            "  change  disk     changed   seconds  data MB/s  nodes  node bytes  sqlite growth"
        )
        for c in s["cases"]:
            for label in ("small", "big"):
                if label not in c:
                    continue
                r = c[label]
                name = (
                    g(s["image_bytes"]) if label == "small" else f"{s['big_bytes'] / GiB:.0f} GiB"
                )
                out.append(
                    f"  {c['pct']:5.1f}%  {name:>8} {g(r['changed_bytes']):>9} {r['seconds']:8.3f} "
                    f"{r['changed_bytes'] / r['seconds'] / 1e6:9.0f} {r['new_nodes']:6d} {r['node_bytes']:11d} {r['sqlite_growth']:11d}"
                )
            if "ratio_time" in c:
                out.append(
                    f"         ratio sparse/small: time {c['ratio_time']:.2f}, node bytes {c['ratio_node_bytes']:.2f}"
                )
    if r := res.get("read"):
        out += [
            f"== sequential read, 1 MiB readinto  (RSS {r['rss_MiB']:.0f} MiB)",
            f"  raw file (page cache) {r['raw_GBps']:6.2f} GB/s   ImageReader {r['image_GBps']:6.2f} GB/s   "
            f"slower by {r['ratio_raw_vs_image']:.1f} x   (CPU {r['image_cpu_s']:.2f} s; load avg {r['load_avg']:.1f})",
        ]
    if r := res.get("random"):
        out.append(
            f"== random 4 KiB preads of data blocks  (RSS {r['rss_MiB']:.0f} MiB, load avg {r['load_avg']:.1f})"
        )
        for k in ("no_cache_cold", "no_cache_warm", "cache_64MiB_warm"):
            out.append(f"  {k:16} {r[k]['reads_per_s']:9.0f} reads/s ({r[k]['reads']} reads)")
        out.append("  (cold: the repository's files evicted from the page cache before every read)")
    if b := res.get("blocksize"):
        out.append(
            f"== block size trade-off, {g(b['image_bytes'])} image  (RSS {b['rss_MiB']:.0f} MiB)"
        )
        out.append(
            "  block    write GB/s  stored      map nodes  map bytes   0.1%-as-4KiB inc: blocks read  stored  node bytes"
        )
        for x in b["rows"]:
            out.append(
                f"  {x['block_size'] // KiB:5d}K {x['write_GBps']:10.2f}  {g(x['stored_bytes']):>10} {x['map_nodes']:9d} "
                f"{x['map_node_bytes']:10d}   {x['inc_blocks']:6d} {g(x['inc_read_bytes']):>9} {g(x['inc_stored_bytes']):>9} {x['inc_node_bytes']:9d}"
            )
    return out


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

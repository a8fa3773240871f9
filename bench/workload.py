"""The benches' shared workload and measurements: deterministic disk content and the
baselines every figure of ``bench_catalog.py`` is compared with.

``Content`` streams a disk image of a known mix (never held whole); the baselines do a full
backup's essential work on the same bytes with nothing stored, on one thread or on a pool.
"""

from __future__ import annotations

import os
import random
import resource
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import blake3
import zstandard

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
UNIT = 64 * KiB  # content is generated in 64 KiB units, in runs of RUN units of one kind
RUN = 4
WRITE_CHUNK = 4 * MiB


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


# -- baselines: the essential work, nothing stored -------------------------------------------


def baseline_full(content: Content, bs: int) -> int:
    """Zero check, blake3 and zstd-3 of every ``bs`` block of ``content`` on this thread; the
    bytes a store of the non-zero blocks would hold (compressed, never larger than raw)."""
    comp = zstandard.ZstdCompressor(level=3, write_content_size=True)
    zero, stored = bytes(bs), 0
    for _, data in content.chunks():
        for p in range(0, len(data), bs):
            block = data[p : p + bs]
            if block == zero:
                continue
            blake3.blake3(block).digest()
            stored += min(len(comp.compress(block)), len(block))
    return stored


def baseline_hash(content: Content, bs: int) -> None:
    """Zero check and blake3 of every ``bs`` block of ``content`` on this thread: the work of
    an incremental without change tracking, where nothing is new."""
    zero = bytes(bs)
    for _, data in content.chunks():
        for p in range(0, len(data), bs):
            block = data[p : p + bs]
            if block != zero:
                blake3.blake3(block).digest()


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


def block_encoder(bs: int) -> Callable[[bytes], list[bytes]]:
    """(thread-safe) piece -> its non-zero ``bs`` blocks' stored forms: each hashed with BLAKE3
    and zstd-3-compressed, kept raw when compression does not make it smaller."""
    local = threading.local()
    zero = bytes(bs)

    def work(data: bytes) -> list[bytes]:
        comp = getattr(local, "comp", None)
        if comp is None:
            comp = local.comp = zstandard.ZstdCompressor(level=3, write_content_size=True)
        view, out = memoryview(data), []
        for p in range(0, len(data), bs):
            if not data.startswith(zero, p):
                block = view[p : p + bs]
                blake3.blake3(block).digest()
                packed = comp.compress(block)
                out.append(packed if len(packed) < len(block) else bytes(block))
        return out

    return work


def baseline_threads_stored(content: Content, bs: int, threads: int, out: str) -> int:
    """:func:`baseline_threads`, plus the least a backup must also do with the result: the
    calling thread appends every non-zero block's stored form (its zstd frame, or the block
    when that is not smaller) to one file and fsyncs it at the end. No index, no dedup, no
    crash safety beyond that one fsync. Returns the bytes written."""
    work = block_encoder(bs)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    written = 0
    try:
        with ThreadPoolExecutor(threads) as pool:
            inflight: deque[Future[list[bytes]]] = deque()

            def store(fut: Future[list[bytes]]) -> int:
                return sum(os.write(fd, payload) for payload in fut.result())

            for _, data in content.chunks():
                inflight.append(pool.submit(work, data))
                if len(inflight) >= 16:
                    written += store(inflight.popleft())
            for fut in inflight:
                written += store(fut)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(out)
    return written


# -- measurements ------------------------------------------------------------------------------


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


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out

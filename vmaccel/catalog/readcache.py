"""A bounded local read cache of immutable objects (packs) of a remote object store.

Mounts and restores read a pack chunk by chunk; against object storage every read is a
request with a round trip. The cache keeps aligned segments of ``SEGMENT`` bytes of each
object as files under one directory, at most ``max_bytes`` in all (file bytes), and evicts
the least recently used segment first. A read fetches the segments it lacks with one ranged
request per contiguous run, so a sequential restore costs one request per segment and a
re-read none. Reading on sequentially into a new segment fetches the next ``readahead``
segments in the background (their reads then wait for them, or find them cached), so a
restore or a mount read in order overlaps the server's answers with its own work.

Only objects that are never rewritten under their key may be cached (pack names are random
and never reused). A segment file is written to a temporary name and renamed into place, so a
reader never sees part of one; several processes may share the directory (each keeps its own
LRU order and size estimate; a segment another process evicted is simply fetched again).
Thread safe.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from vmaccel.catalog.durable import make_private_dir
from vmaccel.vocabulary.errors import VmaccelError

logger = logging.getLogger(__name__)

SEGMENT = 1024 * 1024
READAHEAD = 4  # segments fetched ahead of a sequential reader, each in a thread of its own

Fetch = Callable[[int, int], bytes]  # (offset, length) -> bytes, fewer only at the end


class ReadCache:
    """Segments of objects on local disk, LRU, bounded by ``max_bytes`` (see module doc)."""

    def __init__(
        self, root: Path, max_bytes: int, segment: int = SEGMENT, readahead: int = READAHEAD
    ) -> None:
        self.root, self.max_bytes, self.segment = root, max_bytes, segment
        self.readahead = readahead
        self._ahead = ThreadPoolExecutor(readahead, "readahead") if readahead else None
        self._inflight: dict[str, Future[bytes]] = {}  # segment name -> its background fetch
        self._last: OrderedDict[str, int] = OrderedDict()  # object tag -> last segment read
        self._ends: OrderedDict[str, int] = OrderedDict()  # object tag -> its last segment
        self._lock = threading.Lock()
        self._files: OrderedDict[str, int] = OrderedDict()  # file name -> bytes, LRU first
        self._bytes = 0
        self.hits = self.misses = 0
        make_private_dir(root)
        found = []
        for e in os.scandir(root):
            if e.is_file() and not e.name.startswith("."):
                st = e.stat()
                found.append((st.st_mtime, e.name, st.st_size))
            elif e.name.startswith("."):
                Path(e.path).unlink(missing_ok=True)  # a temp file of a killed writer
        for _, name, size in sorted(found):
            self._files[name] = size
            self._bytes += size
        self._evict()

    @property
    def size(self) -> int:
        """File bytes the cache holds (as this process knows it)."""
        return self._bytes

    def read(self, key: str, offset: int, length: int, fetch: Fetch) -> bytes:
        """``length`` bytes of object ``key`` at ``offset`` (fewer only at its end), from
        cached segments and ``fetch`` for the missing ones. Only the bytes asked for are
        read from a cached segment (a chunk read costs its own size, not a segment's)."""
        if length <= 0:
            return b""
        seg, end = self.segment, offset + length
        first, last = offset // seg, (end - 1) // seg
        tag = hashlib.sha256(key.encode()).hexdigest()[:32]

        def wanted(i: int) -> tuple[int, int]:  # the part of segment i asked for
            return max(offset, i * seg) - i * seg, min(end, (i + 1) * seg) - i * seg

        parts: dict[int, bytes] = {}
        missing = []
        for i in range(first, last + 1):
            lo, hi = wanted(i)
            # A read-ahead on its way first: it stores its segment before it stops being in
            # flight, so a segment neither in flight nor stored after it is a real miss (the
            # other order could miss a read-ahead finishing in between, and fetch it twice).
            data = self._awaited(f"{tag}-{i}", lo, hi)
            if data is None:
                data = self._load(f"{tag}-{i}", lo, hi)
            if data is None:
                missing.append(i)
                continue
            parts[i] = data
            if len(data) < hi - lo:
                last = i  # the object ends in this segment: nothing after it to fetch
                break
        for start, count in _runs(missing):
            got = fetch(start * seg, count * seg)
            for i in range(start, start + count):
                piece = got[(i - start) * seg : (i - start + 1) * seg]
                if piece:
                    self._store(f"{tag}-{i}", piece)
                if len(piece) < seg:
                    self._ended(tag, i)
                lo, hi = wanted(i)
                parts[i] = piece[lo:hi]
        self._read_ahead(tag, first, last, fetch)
        out = []
        for i in range(first, last + 1):
            out.append(parts[i])
            lo, hi = wanted(i)
            if len(parts[i]) < hi - lo:
                break  # the object ends in this segment
        return out[0] if len(out) == 1 else b"".join(out)

    def prefetch(self, key: str, offset: int, length: int, fetch: Fetch) -> None:
        """Fetch the segments of ``key`` that bytes ``offset .. offset + length`` touch and
        that are neither cached nor on their way, in the background; returns at once (a
        later :meth:`read` waits for them or finds them cached). Nothing without read-ahead
        threads, and nothing past the object's known end."""
        if self._ahead is None or length <= 0:
            return
        tag = hashlib.sha256(key.encode()).hexdigest()[:32]
        first, last = offset // self.segment, (offset + length - 1) // self.segment
        with self._lock:
            self._submit(tag, range(first, min(last, self._ends.get(tag, last)) + 1), fetch)

    def _awaited(self, name: str, lo: int, hi: int) -> bytes | None:
        """Bytes ``lo .. hi`` of a segment being fetched ahead, once it is here (None when
        none is, or it failed: the caller fetches it itself)."""
        with self._lock:
            pending = self._inflight.get(name)
        if pending is None:
            return None
        try:
            return pending.result()[lo:hi]
        except (VmaccelError, OSError):  # a failed read-ahead: the reader fetches it itself
            return None

    def _read_ahead(self, tag: str, first: int, last: int, fetch: Fetch) -> None:
        """Entering segment ``last`` right after reading ``first - 1`` or ``first``: fetch the
        next ``readahead`` segments not cached nor on their way, in the background."""
        if self._ahead is None:
            return
        with self._lock:
            before = self._last.pop(tag, None)
            self._last[tag] = last
            if len(self._last) > 64:
                self._last.popitem(last=False)
            if before is None or not before <= first <= before + 1 or last == before:
                return
            end = self._ends.get(tag, last + self.readahead)
            self._submit(tag, range(last + 1, min(end, last + self.readahead) + 1), fetch)

    def _submit(self, tag: str, segments: range, fetch: Fetch) -> None:
        """Fetch the ``segments`` of object ``tag`` that are neither cached nor on their way,
        on the read-ahead threads (the caller holds the lock and has them)."""
        assert self._ahead is not None  # noqa: S101 - callers return early without threads
        for i in segments:
            name = f"{tag}-{i}"
            if name not in self._inflight and name not in self._files:
                self._inflight[name] = self._ahead.submit(self._fetch_ahead, tag, i, fetch)

    def _ended(self, tag: str, i: int) -> None:
        """Object ``tag`` ends in segment ``i`` (a fetch came back short): read no further."""
        with self._lock:
            self._ends[tag] = min(i, self._ends.get(tag, i))
            if len(self._ends) > 256:
                self._ends.popitem(last=False)

    def _fetch_ahead(self, tag: str, i: int, fetch: Fetch) -> bytes:
        name = f"{tag}-{i}"
        try:
            data = fetch(i * self.segment, self.segment)
            if data:
                self._store(name, data)
            if len(data) < self.segment:
                self._ended(tag, i)
            return data
        finally:
            with self._lock:
                self._inflight.pop(name, None)

    def _load(self, name: str, lo: int, hi: int) -> bytes | None:
        """Bytes ``lo .. hi`` of a cached segment (fewer where it ends), or None if absent."""
        try:
            fd = os.open(self.root / name, os.O_RDONLY)
        except FileNotFoundError:
            with self._lock:
                self.misses += 1
                size = self._files.pop(name, None)
                if size is not None:
                    self._bytes -= size  # evicted by another process
            return None
        try:
            data = os.pread(fd, hi - lo, lo)
        finally:
            os.close(fd)
        with self._lock:
            self.hits += 1
            if name in self._files:
                self._files.move_to_end(name)
        return data

    def _store(self, name: str, data: bytes) -> None:
        tmp = self.root / f".{name}.{secrets.token_hex(4)}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            tmp.replace(self.root / name)
        except OSError as exc:  # a full cache disk costs speed, never a read
            logger.warning("read cache: cannot store a segment in %s: %s", self.root, exc)
            tmp.unlink(missing_ok=True)
            return
        with self._lock:
            old = self._files.pop(name, 0)
            self._files[name] = len(data)
            self._bytes += len(data) - old
            self._evict()

    def _evict(self) -> None:
        """Drop least recently used segments until the cache fits (lock held or at init)."""
        while self._bytes > self.max_bytes and self._files:
            name, size = self._files.popitem(last=False)
            self._bytes -= size
            (self.root / name).unlink(missing_ok=True)


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted segment indices as (first, count) runs of consecutive ones."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs

"""A bounded local read cache of immutable objects (packs) of a remote object store.

Mounts and restores read a pack chunk by chunk; against object storage every read is a
request with a round trip. The cache keeps aligned segments of ``SEGMENT`` bytes of each
object as files under one directory, at most ``max_bytes`` in all (file bytes), and evicts
the least recently used segment first. A read fetches the segments it lacks with one ranged
request per contiguous run, so a sequential restore costs one request per segment and a
re-read none.

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
from pathlib import Path

from vmaccel.catalog.durable import make_private_dir

logger = logging.getLogger(__name__)

SEGMENT = 1024 * 1024

Fetch = Callable[[int, int], bytes]  # (offset, length) -> bytes, fewer only at the end


class ReadCache:
    """Segments of objects on local disk, LRU, bounded by ``max_bytes`` (see module doc)."""

    def __init__(self, root: Path, max_bytes: int, segment: int = SEGMENT) -> None:
        self.root, self.max_bytes, self.segment = root, max_bytes, segment
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
        cached segments and ``fetch`` for the missing ones."""
        if length <= 0:
            return b""
        seg = self.segment
        first, last = offset // seg, (offset + length - 1) // seg
        tag = hashlib.sha256(key.encode()).hexdigest()[:32]
        parts: dict[int, bytes] = {}
        missing = []
        for i in range(first, last + 1):
            data = self._load(f"{tag}-{i}")
            if data is None:
                missing.append(i)
            else:
                parts[i] = data
        for start, count in _runs(missing):
            got = fetch(start * seg, count * seg)
            for j in range(count):
                piece = got[j * seg : (j + 1) * seg]
                parts[start + j] = piece
                if piece:
                    self._store(f"{tag}-{start + j}", piece)
        out = bytearray()
        for i in range(first, last + 1):
            piece = parts[i]
            out += piece
            if len(piece) < seg:
                break  # the object ends in this segment
        skip = offset - first * seg
        return bytes(out[skip : skip + length])

    def _load(self, name: str) -> bytes | None:
        try:
            with open(self.root / name, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            with self._lock:
                self.misses += 1
                size = self._files.pop(name, None)
                if size is not None:
                    self._bytes -= size  # evicted by another process
            return None
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

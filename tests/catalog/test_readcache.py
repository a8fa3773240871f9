"""The read cache returns exactly the object's bytes for any range, from fetched and from
cached segments alike, and fetches each segment once."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

from vmaccel.catalog.readcache import ReadCache
from vmaccel.vocabulary.errors import RepositoryError


def test_any_range_reads_the_objects_bytes_cold_and_cached(tmp_path: Path) -> None:
    rng = random.Random(7)
    obj = rng.randbytes(10 * 4096 + 123)  # ends inside a segment
    fetched: list[tuple[int, int]] = []

    def fetch(offset: int, length: int) -> bytes:
        fetched.append((offset, length))
        return obj[offset : offset + length]

    cache = ReadCache(tmp_path / "cache", max_bytes=1 << 20, segment=4096)
    for _ in range(400):
        offset = rng.randrange(len(obj))
        length = rng.randrange(1, 3 * 4096)
        assert cache.read("packs/k", offset, length, fetch) == obj[offset : offset + length]
    # every segment came from the server once; everything after that was a cache hit (a
    # read-ahead may also ask past the object's end before it knows where that is)
    inside = [(o, n) for o, n in fetched if o < len(obj)]
    assert len({o for o, _ in inside}) == len(inside)
    assert sum(min(n, len(obj) - o) for o, n in inside) == len(obj)
    assert cache.read("packs/k", 0, len(obj) + 9999, fetch) == obj


def test_a_sequential_reader_finds_the_next_segments_fetched_ahead(tmp_path: Path) -> None:
    obj = random.Random(3).randbytes(32 * 4096)
    asked: list[int] = []
    threads: set[str] = set()

    def fetch(offset: int, length: int) -> bytes:
        asked.append(offset // 4096)
        threads.add(threading.current_thread().name)
        time.sleep(0.002)
        return obj[offset : offset + length]

    cache = ReadCache(tmp_path / "cache", max_bytes=1 << 20, segment=4096, readahead=3)
    got = b"".join(cache.read("packs/k", at, 1024, fetch) for at in range(0, len(obj), 1024))
    assert got == obj
    assert sorted(i for i in asked if i < 32) == list(range(32))  # each segment once
    assert any(name.startswith("readahead") for name in threads)


def test_a_failed_read_ahead_is_fetched_again_by_the_reader(tmp_path: Path) -> None:
    obj = random.Random(4).randbytes(16 * 4096)

    def fetch(offset: int, length: int) -> bytes:
        if threading.current_thread().name.startswith("readahead"):
            raise RepositoryError("object store error: the server went away")
        return obj[offset : offset + length]

    cache = ReadCache(tmp_path / "cache", max_bytes=1 << 20, segment=4096, readahead=2)
    got = b"".join(cache.read("packs/k", at, 4096, fetch) for at in range(0, len(obj), 4096))
    assert got == obj


def test_prefetched_segments_are_fetched_in_the_background_once(tmp_path: Path) -> None:
    obj = random.Random(5).randbytes(20 * 4096 + 100)  # ends inside segment 20
    asked: list[tuple[str, int]] = []

    def fetch(offset: int, length: int) -> bytes:
        asked.append((threading.current_thread().name, offset // 4096))
        return obj[offset : offset + length]

    cache = ReadCache(tmp_path / "cache", max_bytes=1 << 20, segment=4096, readahead=2)
    cache.prefetch("packs/k", 3 * 4096 + 10, 5 * 4096, fetch)  # segments 3 .. 8
    cache.prefetch("packs/k", 4 * 4096, 4096, fetch)  # on their way already: nothing more
    got = cache.read("packs/k", 3 * 4096 + 10, 5 * 4096, fetch)
    assert got == obj[3 * 4096 + 10 : 8 * 4096 + 10]
    assert sorted(i for _, i in asked) == [3, 4, 5, 6, 7, 8]
    assert all(name.startswith("readahead") for name, _ in asked)
    # the object's end is known once a fetch came back short: nothing is asked past it
    cache.read("packs/k", 20 * 4096, 4096, fetch)
    before = len(asked)
    cache.prefetch("packs/k", 19 * 4096, 10 * 4096, fetch)  # 19 and 20; 20 is cached
    assert cache.read("packs/k", 19 * 4096, 4096, fetch) == obj[19 * 4096 : 20 * 4096]
    assert [i for _, i in asked[before:]] == [19]
    assert asked[-1][0].startswith("readahead")


def test_prefetch_without_read_ahead_threads_fetches_nothing(tmp_path: Path) -> None:
    asked: list[int] = []

    def fetch(offset: int, length: int) -> bytes:
        asked.append(offset)
        return bytes(length)

    cache = ReadCache(tmp_path / "cache", max_bytes=1 << 20, segment=4096, readahead=0)
    cache.prefetch("packs/k", 0, 8 * 4096, fetch)
    assert asked == []

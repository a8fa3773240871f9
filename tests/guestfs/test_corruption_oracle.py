"""The corruption matrix's own machinery: the copy-on-write disk, the oracle, the case runner.

The matrix is only as good as these: a disk that served the wrong bytes, an oracle blind to a
missing sector or a runner that swallowed a crash would let data loss pass silently.
"""

from __future__ import annotations

import signal
import struct
import time
from dataclasses import replace

import pytest

from tests.guestfs import corruption
from tests.guestfs.corruption import (
    HEADER,
    CaseTimeout,
    Mutation,
    Patch,
    PatchedDisk,
    pick_kind,
    run_case,
    time_limit,
    uncovered,
)
from tests.guestfs.corruption_targets import Get
from vmaccel.guestfs.allocation import build_allocation_map
from vmaccel.guestfs.extent import Extent, complement, intersect

pytest_plugins = ["tests.guestfs.corruption_fixtures"]


def test_patched_disk_is_an_mbr_then_the_partition_with_patches(prepared: Get) -> None:
    target = prepared("ext4").target
    patch = Patch(4096 + 100, b"\xde\xad\xbe\xef")
    with PatchedDisk(target, [(patch.offset, patch.data)]) as disk:
        mbr = bytearray(512)
        disk.readinto(mbr)
        assert mbr[510:] == b"\x55\xaa"
        assert struct.unpack_from("<B3xB3xII", mbr, 446) == (
            0, 0x83, HEADER // 512, target.size // 512,
        )  # fmt: skip
        disk.seek(HEADER - 10)
        got = bytearray(8192)
        assert disk.readinto(got) == 8192
        expect = bytearray(bytes(10) + target.read_fs(0, 8182))
        expect[10 + 4196 : 10 + 4200] = patch.data
        assert got == expect
        assert disk.seek(0, 2) == HEADER + target.size
        assert disk.readinto(bytearray(10)) == 0


def test_oracle_names_the_first_missing_byte_of_file_data(prepared: Get) -> None:
    p = prepared("ext4")
    with PatchedDisk(p.target, []) as disk:
        amap = build_allocation_map(disk)  # type: ignore[arg-type]
    assert uncovered(amap, p.target, p.truth) is None
    piece = p.truth.data[len(p.truth.data) // 2]
    hole = Extent(HEADER + piece.offset + 512, 512)
    lossy = replace(amap, used=intersect(amap.used, complement((hole,), amap.disk_size)))
    message = uncovered(lossy, p.target, p.truth)
    assert message is not None
    assert f"uncovered file data of {p.truth.owner(piece.offset + 512)!r}" in message
    assert f"at fs byte {piece.offset + 512} (disk byte {hole.offset}); 512 bytes" in message


def test_oracle_also_guards_the_metadata(prepared: Get) -> None:
    p = prepared("ntfs")
    with PatchedDisk(p.target, []) as disk:
        amap = build_allocation_map(disk)  # type: ignore[arg-type]
    lossy = replace(
        amap, used=intersect(amap.used, complement((Extent(HEADER, 512),), amap.disk_size))
    )
    assert "uncovered metadata at fs byte 0" in (uncovered(lossy, p.target, p.truth) or "")


def test_a_seed_alone_reproduces_a_case(prepared: Get) -> None:
    p = prepared("xfs")
    assert pick_kind(p.kinds, p.target, 17) == pick_kind(p.kinds, p.target, 17)
    assert len({pick_kind(p.kinds, p.target, s).detail for s in range(40)}) > 30


def test_a_crash_is_a_failure_unless_the_layout_was_refused(
    prepared: Get, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = prepared("fat16")

    def broken(_disk: object) -> None:
        raise IndexError("parser bug")

    monkeypatch.setattr(corruption, "build_allocation_map", broken)
    fs_level = Mutation("x", "y", (Patch(0, b"\x00"),))
    result = run_case(p.target, p.truth, 5, fs_level)
    assert result.failure == "crash: IndexError: parser bug"
    assert "seed=5 fs=fat16 kind=x: y -> crash" in result.message()


def test_a_hang_is_stopped_and_the_outer_timer_survives() -> None:
    previous = signal.signal(signal.SIGALRM, lambda *_: None)
    signal.setitimer(signal.ITIMER_REAL, 100.0)
    try:
        started = time.monotonic()
        with pytest.raises(CaseTimeout), time_limit(0.05):
            while True:
                pass
        assert time.monotonic() - started < 1.0
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 98.0 < remaining <= 100.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

"""vmaccel.catalog.pack: writing, sealing, reading the index back, and damage detection."""

from __future__ import annotations

import io
import os

import pytest

from vmaccel.catalog.pack import (
    FOOTER_SIZE,
    HEADER_SIZE,
    KIND_DATA,
    KIND_NODE,
    PackWriter,
    check_header,
    read_index,
    scan_entries,
)
from vmaccel.vocabulary.errors import DamageError

REPO_ID = bytes(range(16))


def _pack(n: int = 5) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    buf = io.BytesIO()
    w = PackWriter(buf, REPO_ID)
    items = []
    for i in range(n):
        payload = os.urandom(100 + i * 37)
        cid = bytes([i]) * 32
        w.add(cid, KIND_NODE if i % 2 else KIND_DATA, i % 4, len(payload) * 2, payload)
        items.append((cid, payload))
    assert len(w) == n
    size = w.seal()
    data = buf.getvalue()
    assert size == len(data)
    return data, items


def _reader(data: bytes):  # type: ignore[no-untyped-def]
    return lambda off, n: data[off : off + n]


def test_seal_and_read_index() -> None:
    data, items = _pack()
    check_header(data, REPO_ID, "p")
    entries = read_index(_reader(data), len(data), "p")
    assert [e.id for e in entries] == [cid for cid, _ in items]
    for i, (e, (_, payload)) in enumerate(zip(entries, items, strict=True)):
        assert data[e.offset : e.offset + e.stored_len] == payload
        assert e.kind == (KIND_NODE if i % 2 else KIND_DATA)
        assert e.flags == i % 4
        assert e.raw_len == 2 * len(payload)


def test_writer_entries_match_index() -> None:
    buf = io.BytesIO()
    w = PackWriter(buf, REPO_ID)
    first = w.add(b"a" * 32, KIND_DATA, 0, 3, b"abc")
    assert first.offset == HEADER_SIZE + 48
    assert w.size == first.offset + 3
    w.seal()
    assert read_index(_reader(buf.getvalue()), len(buf.getvalue()), "p") == w.entries


def test_empty_pack_seals() -> None:
    buf = io.BytesIO()
    PackWriter(buf, REPO_ID).seal()
    assert read_index(_reader(buf.getvalue()), len(buf.getvalue()), "p") == []


def test_scan_entries_walks_inline_headers() -> None:
    data, items = _pack()
    assert [e.id for e in scan_entries(_reader(data), len(data))] == [c for c, _ in items]
    # without the trailer (never sealed) the inline headers still give every entry
    index_off = int.from_bytes(data[-FOOTER_SIZE : -FOOTER_SIZE + 8], "little")
    unsealed = data[:index_off]
    assert len(list(scan_entries(_reader(unsealed), len(unsealed)))) == len(items)


def test_scan_entries_stops_at_damage() -> None:
    data, items = _pack()
    entries = read_index(_reader(data), len(data), "p")
    bad = bytearray(data)
    bad[entries[2].offset + 3] ^= 0xFF  # payload of the third entry
    found = list(scan_entries(_reader(bytes(bad)), len(bad)))
    assert [e.id for e in found] == [items[0][0], items[1][0]]


def test_scan_entries_stops_at_truncation() -> None:
    data, _ = _pack()
    entries = read_index(_reader(data), len(data), "p")
    cut = data[: entries[3].offset + 10]
    assert len(list(scan_entries(_reader(cut), len(cut)))) == 3


@pytest.mark.parametrize("cut", [1, FOOTER_SIZE, FOOTER_SIZE + 10])
def test_truncated_pack_has_no_valid_footer(cut: int) -> None:
    data, _ = _pack()
    short = data[:-cut]
    with pytest.raises(DamageError, match="pack p1 "):
        read_index(_reader(short), len(short), "p1")


def test_tiny_pack_is_too_short() -> None:
    with pytest.raises(DamageError, match="too short"):
        read_index(_reader(b"x" * 10), 10, "p2")


def test_damaged_footer_magic() -> None:
    data = bytearray(_pack()[0])
    data[-1] ^= 0xFF
    with pytest.raises(DamageError, match="no valid footer"):
        read_index(_reader(bytes(data)), len(data), "p3")


def test_damaged_footer_offset() -> None:
    data = bytearray(_pack()[0])
    data[-FOOTER_SIZE] ^= 0x01
    with pytest.raises(DamageError, match="pack p4"):
        read_index(_reader(bytes(data)), len(data), "p4")


def test_damaged_index_crc() -> None:
    data = bytearray(_pack()[0])
    data[-FOOTER_SIZE - 5] ^= 0x01  # inside the trailing index
    with pytest.raises(DamageError, match="damaged index"):
        read_index(_reader(bytes(data)), len(data), "p5")


def test_header_checks() -> None:
    data, _ = _pack(1)
    with pytest.raises(DamageError, match="another repository"):
        check_header(data, bytes(16), "p6")
    with pytest.raises(DamageError, match="no valid header"):
        check_header(b"X" + data[1:], REPO_ID, "p6")
    with pytest.raises(DamageError, match="truncated"):
        check_header(data[:10], REPO_ID, "p6")

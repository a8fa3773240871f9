"""The pack format, byte for byte, whichever path writes it.

The expected bytes are built here from the layout in ``vmaccel.catalog.pack``'s docstring
(struct by struct, independently of the writer), then compared with a pack written entry by
entry (``PackWriter.add``) and with every pack a real backup leaves in a repository (data
chunks from the image writer's workers, map nodes, several packs). A faster write path must
keep these bytes.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.catalog.pack import KIND_DATA, KIND_NODE, PackWriter, read_index

REPO_ID = bytes(range(16, 32))


def spec_pack(repo_id: bytes, items: list[tuple[bytes, int, int, int, bytes]]) -> bytes:
    """A sealed pack of ``items`` (chunk id, kind, flags, raw_len, payload), per the format."""
    out = bytearray(struct.pack("<8sII16s", b"VMAPACK\x01", 1, 0, repo_id))
    records = []
    for cid, kind, flags, raw_len, payload in items:
        header = struct.pack(
            "<BBHIII32s", kind, flags, 0, len(payload), raw_len, zlib.crc32(payload), cid
        )
        out += header
        records.append(header + struct.pack("<Q", len(out)))
        out += payload
    index = struct.pack("<I", len(items)) + b"".join(records)
    footer = struct.pack("<QII8s", len(out), len(index), zlib.crc32(index), b"VMAPEND\x01")
    return bytes(out + index + footer)


def _reader(data: bytes) -> Callable[[int, int], bytes]:
    return lambda off, n: data[off : off + n]


def _items(seed: int, n: int) -> list[tuple[bytes, int, int, int, bytes]]:
    rng = random.Random(seed)
    return [
        (
            rng.randbytes(32),
            KIND_NODE if i % 5 == 4 else KIND_DATA,
            i % 4,
            rng.randrange(1 << 20),
            rng.randbytes(rng.choice([0, 1, 48, 700, 4096])),
        )
        for i in range(n)
    ]


def test_add_writes_the_specified_bytes() -> None:
    items = _items(7, 60)
    buf = io.BytesIO()
    w = PackWriter(buf, REPO_ID)
    for cid, kind, flags, raw_len, payload in items:
        entry = w.add(cid, kind, flags, raw_len, payload)
        assert entry.offset + entry.stored_len == w.size
    assert w.seal() == len(buf.getvalue())
    assert buf.getvalue() == spec_pack(REPO_ID, items)
    assert w.entries == read_index(_reader(buf.getvalue()), w.size, "p")


def test_backup_packs_are_the_specified_bytes(tmp_path: Path) -> None:
    """Packs written by the image writer (data chunks, many per task, several packs) and by
    the map's node stores are exactly what the format says for their entries."""
    config = RepositoryConfig(block_size=4096, map_fanout=16, pack_size=96 * 1024)
    Repository.init(tmp_path / "r", config)
    rng = random.Random(3)
    blocks = [rng.randbytes(4096) if i % 3 else b"log line %d\n" % i * 300 for i in range(160)]
    data = b"".join(b[:4096].ljust(4096, b"\0") for b in blocks)
    data += bytes(8 * 4096) + data[:4096] * 4  # zeros, and repeats of a stored block
    with Repository.open(tmp_path / "r", write=True) as repo:
        with repo.begin_backup("vm") as bw:
            w = bw.image_writer("d", len(data))
            w.write(0, data)
            bw.finish_image("d", w)
            backup = bw.commit()
        packs = repo.index.packs()
        assert len(packs) > 2
        chunks = 0
        for row in packs:
            raw = repo.packs.read(row.name, 0, row.size)
            entries = read_index(_reader(raw), row.size, row.name)
            items = [
                (e.id, e.kind, e.flags, e.raw_len, raw[e.offset : e.offset + e.stored_len])
                for e in entries
            ]
            assert raw == spec_pack(repo.config.repo_id, items)
            chunks += sum(e.kind == KIND_DATA for e in entries)
        assert chunks == 160  # every distinct non-zero block once
        with repo.open_image(repo.image(backup, "d")) as r:
            assert r.read() == data

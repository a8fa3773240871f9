"""Pack files: append-only containers of stored chunks.

On-disk layout (all integers little-endian; format 1). A pack MUST be written in this order and
made durable (fsync of the file, then of its directory) before any index row names it::

    header   32 B   magic "VMAPACK\\x01" | format u32 | reserved u32 | repository id 16 B
    entry*          entry header 48 B | payload (stored_len bytes)
    index           count u32 | count x (entry header 48 B | payload offset u64)
    footer   24 B   index offset u64 | index length u32 | index crc32 u32 | magic "VMAPEND\\x01"

    entry header: kind u8 | flags u8 | reserved u16 | stored_len u32 | raw_len u32 |
                  payload crc32 u32 | chunk id 32 B

``kind`` is 1 for a data chunk, 2 for a block-map node. ``flags`` are the codec's (zstd,
encrypted). The payload crc32 lets ``verify`` and ``rebuild-index`` check stored bytes without
the key; the content hash (checked on every read) is the real guarantee.

The entry headers are written inline *and* repeated in the trailing index, so the index of a
pack can be rebuilt from the pack alone: from the trailer when it is intact, else by walking
the inline headers (which stops at the first damaged entry). A pack without a valid footer was
never sealed; no index row can point into it, and gc removes it.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from vmaccel.vocabulary.errors import DamageError

MAGIC = b"VMAPACK\x01"
END_MAGIC = b"VMAPEND\x01"
FORMAT = 1
KIND_DATA = 1
KIND_NODE = 2

_HEADER = struct.Struct("<8sII16s")
_ENTRY = struct.Struct("<BBHIII32s")
_INDEX_ENTRY = struct.Struct("<BBHIII32sQ")
_FOOTER = struct.Struct("<QII8s")
HEADER_SIZE = _HEADER.size
ENTRY_HEADER_SIZE = _ENTRY.size
FOOTER_SIZE = _FOOTER.size


@dataclass(frozen=True)
class PackEntry:
    """Where one chunk's payload lives inside a pack. Offsets and lengths are in bytes."""

    id: bytes
    kind: int
    flags: int
    offset: int
    stored_len: int
    raw_len: int
    crc: int


class PackWriter:
    """Builds one pack on a writable binary stream. Not thread safe: one writer thread.

    Nothing is durable until the caller fsyncs the stream after :meth:`seal`.
    """

    def __init__(self, out: BinaryIO, repo_id: bytes) -> None:
        self._out = out
        self._entries: list[PackEntry] = []
        self._pos = out.write(_HEADER.pack(MAGIC, FORMAT, 0, repo_id))

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._pos

    @property
    def entries(self) -> list[PackEntry]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def add(
        self,
        chunk_id: bytes,
        kind: int,
        flags: int,
        raw_len: int,
        payload: bytes,
        crc: int | None = None,
    ) -> PackEntry:
        """Append one entry. ``crc`` is ``zlib.crc32(payload)`` if the caller has it already."""
        crc = zlib.crc32(payload) if crc is None else crc
        header = _ENTRY.pack(kind, flags, 0, len(payload), raw_len, crc, chunk_id)
        offset = self._pos + len(header)
        self._out.write(header)
        self._out.write(payload)
        self._pos = offset + len(payload)
        entry = PackEntry(chunk_id, kind, flags, offset, len(payload), raw_len, crc)
        self._entries.append(entry)
        return entry

    def seal(self) -> int:
        """Write the index and footer; return the final pack size in bytes."""
        parts = [struct.pack("<I", len(self._entries))]
        for e in self._entries:
            parts.append(
                _INDEX_ENTRY.pack(
                    e.kind, e.flags, 0, e.stored_len, e.raw_len, e.crc, e.id, e.offset
                )
            )
        index = b"".join(parts)
        self._out.write(index)
        footer = _FOOTER.pack(self._pos, len(index), zlib.crc32(index), END_MAGIC)
        self._out.write(footer)
        self._pos += len(index) + len(footer)
        return self._pos


ReadRange = Callable[[int, int], bytes]


def check_header(data: bytes, repo_id: bytes, name: str) -> None:
    """Raise :class:`DamageError` unless ``data`` starts with a header of this repository."""
    if len(data) < HEADER_SIZE:
        raise DamageError(f"pack {name} is truncated before its header")
    magic, fmt, _, rid = _HEADER.unpack_from(data)
    if magic != MAGIC or fmt != FORMAT:
        raise DamageError(f"pack {name} has no valid header")
    if rid != repo_id:
        raise DamageError(f"pack {name} belongs to another repository")


def read_index(read: ReadRange, size: int, name: str) -> list[PackEntry]:
    """Read a sealed pack's trailing index. Raises :class:`DamageError` when it is invalid."""
    if size < HEADER_SIZE + FOOTER_SIZE + 4:
        raise DamageError(f"pack {name} is too short to be sealed ({size} bytes)")
    index_off, index_len, index_crc, magic = _FOOTER.unpack(read(size - FOOTER_SIZE, FOOTER_SIZE))
    if magic != END_MAGIC or index_off + index_len != size - FOOTER_SIZE:
        raise DamageError(f"pack {name} has no valid footer (truncated or never sealed)")
    index = read(index_off, index_len)
    if zlib.crc32(index) != index_crc:
        raise DamageError(f"pack {name} has a damaged index")
    (count,) = struct.unpack_from("<I", index)
    if 4 + count * _INDEX_ENTRY.size != index_len:
        raise DamageError(f"pack {name} index length does not match its entry count")
    entries = []
    for i in range(count):
        kind, flags, _, slen, rlen, crc, cid, off = _INDEX_ENTRY.unpack_from(
            index, 4 + i * _INDEX_ENTRY.size
        )
        if off + slen > index_off:
            raise DamageError(f"pack {name} index points past its data")
        entries.append(PackEntry(cid, kind, flags, off, slen, rlen, crc))
    return entries


def scan_entries(read: ReadRange, size: int) -> Iterator[PackEntry]:
    """Walk the inline entry headers of a pack of ``size`` bytes whose index is unusable,
    reading through ``read(offset, length)`` (a ranged get: this works on any object store).

    Yields every entry whose header is plausible and whose payload crc matches, in order, and
    stops at the first one that is not: what follows a damaged header cannot be located.
    """
    pos = HEADER_SIZE
    while pos + ENTRY_HEADER_SIZE <= size:
        kind, flags, _, slen, rlen, crc, cid = _ENTRY.unpack(read(pos, ENTRY_HEADER_SIZE))
        if kind not in (KIND_DATA, KIND_NODE) or pos + ENTRY_HEADER_SIZE + slen > size:
            return
        payload = read(pos + ENTRY_HEADER_SIZE, slen)
        if zlib.crc32(payload) != crc:
            return
        yield PackEntry(cid, kind, flags, pos + ENTRY_HEADER_SIZE, slen, rlen, crc)
        pos += ENTRY_HEADER_SIZE + slen

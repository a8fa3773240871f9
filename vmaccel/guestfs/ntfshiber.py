"""Whether Windows left an NTFS volume hibernated (also Windows 8+ Fast Startup shutdown).

Hibernation keeps the volume's state in memory, saved to C:\\hiberfil.sys: the on-disk $Bitmap
may lag what the resumed system will write back. ntfs-3g refuses such volumes when the first
four bytes of hiberfil.sys are "hibr"/"HIBR"; we also take "wake" (any case) as a sign that the
image was not consumed.

hiberfil.sys is found by scanning the root directory's $I30 index (MFT record 5): the entries
of its $INDEX_ROOT and of every in-use block ("INDX", protected like MFT records) of its
$INDEX_ALLOCATION, read with one read per physically contiguous run. An index entry is file
reference (0x00; low 48 bits the MFT record, high 16 its sequence number), entry length
(0x08), key length (0x0A), flags (0x0C; 0x02 = last entry) and the key, a FILE_NAME value
whose name length (in UTF-16 units) is at key byte 0x40 and the name at 0x42. The scan does
not rely on the index order, so it needs no $UpCase collation.
"""

from __future__ import annotations

import logging
import struct

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.ntfsrecord import (
    ATTR_BITMAP,
    ATTR_DATA,
    ATTR_INDEX_ALLOCATION,
    ATTR_INDEX_ROOT,
    RECORD_IN_USE,
    Attribute,
    Geometry,
    Run,
    attributes,
    find_attribute,
    read_attribute,
    read_mft_record,
    record_flags,
    unprotect,
)
from vmaccel.guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

HIBERFILE = "HIBERFIL.SYS"
HIBERNATED = (b"hibr", b"wake")
ENTRY_LAST = 0x0002
_MAX_INDEX_BYTES = 16 << 20


def hibernation_signature(
    view: VolumeView, geo: Geometry, mft_runs: list[Run], root: bytes
) -> bytes | None:
    """The first 4 bytes of the root directory's hiberfil.sys when they mark a hibernated
    system ("hibr" or "wake", any case), else None (no such file, or another header).

    `root` is MFT record 5 with fixups applied. Raises `GuestFsError` for a damaged index or
    a damaged hiberfil.sys record.
    """
    ref = _find_in_root(view, geo, root)
    if ref is None:
        return None
    number, seq = ref & 0xFFFFFFFFFFFF, ref >> 48
    rec = read_mft_record(view, geo, mft_runs, number)
    if not record_flags(rec) & RECORD_IN_USE or struct.unpack_from("<H", rec, 0x10)[0] != seq:
        raise GuestFsError(f"ntfs: root index names hiberfil.sys as record {number}, a stale one")
    head = read_attribute(view, geo, find_attribute(rec, ATTR_DATA), 4)
    return head if head.lower() in HIBERNATED else None


def _find_in_root(view: VolumeView, geo: Geometry, root: bytes) -> int | None:
    """The file reference of hiberfil.sys in the root index, or None."""
    attrs = {(a.type, a.name): a for a in attributes(root)}
    index_root = attrs.get((ATTR_INDEX_ROOT, "$I30"))
    if index_root is None or not index_root.resident:
        raise GuestFsError("ntfs: the root directory has no resident $I30 index root")
    value = index_root.value
    block_size = struct.unpack_from("<I", value, 0x08)[0]
    found = _scan_entries(value, 0x10, "the root index root")
    if found is not None:
        return found
    alloc = attrs.get((ATTR_INDEX_ALLOCATION, "$I30"))
    if alloc is None:
        return None
    return _scan_blocks(view, geo, alloc, attrs.get((ATTR_BITMAP, "$I30")), block_size)


def _scan_blocks(
    view: VolumeView, geo: Geometry, alloc: Attribute, bitmap: Attribute | None, block_size: int
) -> int | None:
    if block_size < 512 or block_size & (block_size - 1) or alloc.data_size % block_size:
        raise GuestFsError(f"ntfs: the root index has a bad block size {block_size}")
    if alloc.data_size > _MAX_INDEX_BYTES:
        raise GuestFsError(f"ntfs: the root index is too large ({alloc.data_size} bytes)")
    blocks = alloc.data_size // block_size
    in_use = read_attribute(view, geo, bitmap, (blocks + 7) // 8) if bitmap else b""
    data = read_attribute(view, geo, alloc, alloc.data_size)
    for n in range(blocks):
        if bitmap is not None and not (n // 8 < len(in_use) and in_use[n // 8] >> (n % 8) & 1):
            continue
        what = f"root index block {n}"
        block = unprotect(bytearray(data[n * block_size : (n + 1) * block_size]), b"INDX", what)
        found = _scan_entries(bytes(block), 0x18, what)
        if found is not None:
            return found
    return None


def _scan_entries(buf: bytes, header: int, what: str) -> int | None:
    """Walk the index entries of the INDEX_HEADER at `header` of `buf`; return the reference
    of the hiberfil.sys entry, or None."""
    first, end = struct.unpack_from("<II", buf, header)
    pos, end = header + first, min(header + end, len(buf))
    while pos + 16 <= end:
        ref, length, key_len, flags = struct.unpack_from("<QHHH", buf, pos)
        if flags & ENTRY_LAST:
            return None
        if length < 16 or pos + length > end or 16 + key_len > length:
            raise GuestFsError(f"ntfs: {what} has a malformed entry at {pos}")
        if key_len >= 0x42:
            key = buf[pos + 16 : pos + 16 + key_len]
            name = key[0x42 : 0x42 + 2 * key[0x40]].decode("utf-16-le", "replace")
            if name.upper() == HIBERFILE:
                return int(ref)
        pos += length
    raise GuestFsError(f"ntfs: {what} has no end entry")

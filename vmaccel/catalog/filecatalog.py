"""The file catalog: which files each restore point holds, searchable without mounting.

A *listing* is the file tree of one filesystem (path, kind, size, mtime) stored once per
distinct content (named by a BLAKE3 digest of its records); each image points at the listings
of its volumes. A volume whose blocks did not change since the parent image keeps the parent's
listing without being walked again, so an incremental costs catalog work only for the volumes
it touched. Listings are derived data: ``rebuild-index`` does not restore them.

This module is the engine-neutral part (digests, glob patterns); the rows are kept behind
:class:`~vmaccel.catalog.index.protocols.FileIndex` (SQLite: ``catalog/index/files.py``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

import blake3

from vmaccel.catalog.index.protocols import FileIndex
from vmaccel.catalog.index.records import FileHit, FileRecord

__all__ = [
    "FileHit",
    "FileRecord",
    "attach_listing",
    "find_files",
    "glob_to_like",
    "listing_digest",
    "listing_of",
    "store_listing",
]


def listing_digest(records: Sequence[FileRecord]) -> bytes:
    """The BLAKE3 digest naming a listing: its records in order, each path NUL-terminated,
    then kind, size and mtime; a record with an identity (inode or mode) adds a 0x01 byte
    (no path starts with it) and both as signed 64-bit (-1 for None). Records without one
    hash as before identities were kept, so such listings keep their digests; listings
    with inodes never equal one stored without (their volumes are walked again)."""
    h = blake3.blake3()
    for r in records:
        h.update(r.path.encode("utf-8", "surrogatepass") + b"\0")
        h.update(
            r.kind.encode() + struct.pack("<qq", r.size, -1 if r.mtime_ns is None else r.mtime_ns)
        )
        if r.inode is not None or r.mode is not None:
            h.update(b"\x01" + struct.pack("<qq", _or_minus(r.inode), _or_minus(r.mode)))
    return h.digest()


def _or_minus(value: int | None) -> int:
    return -1 if value is None else value


def store_listing(index: FileIndex, records: Iterable[FileRecord]) -> int:
    """Store a listing (once per distinct content) and return its id. Run in
    ``index.writing()``."""
    rows = sorted(records)
    digest = listing_digest(rows)
    found = index.listing_by_digest(digest)
    return found if found is not None else index.add_listing(digest, rows)


def attach_listing(
    index: FileIndex, image_id: int, volume: str, fstype: str | None, listing_id: int
) -> None:
    """Say that ``volume`` of image ``image_id`` holds listing ``listing_id``."""
    index.attach_listing(image_id, volume, fstype, listing_id)


def listing_of(index: FileIndex, image_id: int, volume: str) -> int | None:
    """The listing ``volume`` of image ``image_id`` holds, if catalogued."""
    return index.listing_of(image_id, volume)


def glob_to_like(pattern: str) -> str:
    """A shell glob (``*``, ``?``) as a SQL LIKE pattern with ``\\`` escapes. A pattern with
    no ``/`` matches a file name anywhere; one starting with ``/`` matches from the root."""
    out = []
    for ch in pattern:
        if ch in "%_\\":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    like = "".join(out)
    if not pattern.startswith(("/", "*")):
        like = "%/" + like
    return like


def find_files(
    index: FileIndex, pattern: str, vm: str | None = None, limit: int = 1000
) -> list[FileHit]:
    """Every restore point holding a path matching the glob ``pattern``, oldest backup first
    (at most ``limit``)."""
    return index.search_files(glob_to_like(pattern), vm, limit)

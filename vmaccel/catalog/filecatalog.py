"""The file catalog: which files each restore point holds, searchable without mounting.

A *listing* is the file tree of one filesystem (path, kind, size, mtime) stored once per
distinct content (named by a BLAKE3 digest of its records); each image points at the listings
of its volumes. A volume whose blocks did not change since the parent image keeps the parent's
listing without being walked again, so an incremental costs catalog work only for the volumes
it touched. Listings are derived data: ``rebuild-index`` does not restore them.

SQL here runs through :meth:`vmaccel.catalog.index.Index.query`; the tables are created by the
``0002_file_catalog`` migration in ``catalog/index.py``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import blake3

from vmaccel.catalog.index import Index

_BATCH = 5000


@dataclass(frozen=True, order=True)
class FileRecord:
    """One file of a listing. ``path`` is absolute within its filesystem ("/etc/passwd");
    ``kind`` is file, dir, symlink or other; ``size`` in bytes; ``mtime_ns`` may be None."""

    path: str
    kind: str
    size: int
    mtime_ns: int | None


@dataclass(frozen=True)
class FileHit:
    """A file found in a restore point. ``time`` is the backup's start (UNIX seconds)."""

    backup_id: int
    vm: str
    time: float
    disk: str
    volume: str
    path: str
    kind: str
    size: int
    mtime_ns: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def listing_digest(records: Sequence[FileRecord]) -> bytes:
    h = blake3.blake3()
    for r in records:
        h.update(r.path.encode("utf-8", "surrogateescape") + b"\0")
        h.update(
            r.kind.encode() + struct.pack("<qq", r.size, -1 if r.mtime_ns is None else r.mtime_ns)
        )
    return h.digest()


def store_listing(index: Index, records: Iterable[FileRecord]) -> int:
    """Store a listing (once per distinct content) and return its id. Run in a transaction."""
    rows = sorted(records)
    digest = listing_digest(rows)
    found = index.query("SELECT id FROM listing WHERE digest = ?", (digest,))
    if found:
        return int(found[0][0])
    cur = index.execute(
        "INSERT INTO listing (digest, entries) VALUES (?, ?) RETURNING id", (digest, len(rows))
    )
    listing_id = int(cur.fetchone()[0])
    for start in range(0, len(rows), _BATCH):
        index.executemany(
            "INSERT INTO file_entry (listing_id, path, kind, size, mtime_ns)"
            " VALUES (?, ?, ?, ?, ?)",
            [
                (listing_id, r.path, r.kind, r.size, r.mtime_ns)
                for r in rows[start : start + _BATCH]
            ],
        )
    return listing_id


def attach_listing(
    index: Index, image_id: int, volume: str, fstype: str | None, listing_id: int
) -> None:
    """Say that ``volume`` of image ``image_id`` holds listing ``listing_id``."""
    index.execute(
        "INSERT INTO image_volume (image_id, volume, fstype, listing_id) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (image_id, volume) DO UPDATE SET fstype = excluded.fstype,"
        " listing_id = excluded.listing_id",
        (image_id, volume, fstype, listing_id),
    )


def listing_of(index: Index, image_id: int, volume: str) -> int | None:
    rows = index.query(
        "SELECT listing_id FROM image_volume WHERE image_id = ? AND volume = ?", (image_id, volume)
    )
    return int(rows[0][0]) if rows else None


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
    index: Index, pattern: str, vm: str | None = None, limit: int = 1000
) -> list[FileHit]:
    """Every restore point holding a path matching ``pattern``, oldest backup first."""
    sql = (
        "SELECT b.id, b.vm, b.started, i.disk, v.volume, f.path, f.kind, f.size, f.mtime_ns"
        " FROM file_entry f JOIN image_volume v ON v.listing_id = f.listing_id"
        " JOIN image i ON i.id = v.image_id JOIN backup b ON b.id = i.backup_id"
        " WHERE b.state = 'complete' AND f.path LIKE ? ESCAPE '\\'"
    )
    params: list[Any] = [glob_to_like(pattern)]
    if vm is not None:
        sql += " AND b.vm = ?"
        params.append(vm)
    sql += " ORDER BY b.started, b.id, i.disk, v.volume, f.path LIMIT ?"
    params.append(limit)
    return [FileHit(*row) for row in index.query(sql, params)]

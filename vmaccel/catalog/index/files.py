"""SQLite implementation of :class:`~vmaccel.catalog.index.protocols.FileIndex`: the file
catalog's ``listing``, ``file_entry`` and ``image_volume`` tables (see docs/format.md and
:mod:`vmaccel.catalog.filecatalog`, which holds the engine-neutral part).

Paths are stored as TEXT when they are valid UTF-8 and otherwise (names with undecodable
bytes, kept with ``surrogateescape`` by guestfs) as a BLOB of their ``surrogatepass`` UTF-8
bytes, which round-trips every Python string. SQLite orders TEXT before BLOB and each by its
bytes, which is :func:`~vmaccel.catalog.index.records.path_order`: ``ORDER BY path`` on the
``(listing_id, path)`` index streams a listing in that order without sorting.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from vmaccel.catalog.index.connection import Connection
from vmaccel.catalog.index.records import (
    COMPLETE,
    FileHit,
    FileRecord,
    PathVersion,
    VolumeListing,
)

_BATCH = 5000  # file entries per executemany
_ENTRY = "path, kind, size, mtime_ns, inode, mode"


def stored_path(path: str) -> str | bytes:
    """``path`` as the catalog stores it: TEXT if valid UTF-8, else BLOB (surrogatepass)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogatepass")
    return path


def loaded_path(value: str | bytes) -> str:
    """The inverse of :func:`stored_path`."""
    return value if isinstance(value, str) else bytes(value).decode("utf-8", "surrogatepass")


def _prefix_filter(prefix: str | None) -> tuple[str, list[Any]]:
    """A WHERE clause (and its values) keeping ``prefix`` and every path below it, in both
    storage forms (a valid directory may hold undecodable names)."""
    top = prefix.rstrip("/") if prefix else ""
    if not top:
        return "", []
    forms: list[tuple[Any, Any, Any]] = [
        (b, b + b"/", b + b"0") for b in [top.encode("utf-8", "surrogatepass")]
    ]
    if isinstance(stored_path(top), str):
        forms.append((top, top + "/", top + "0"))  # "0" sorts right after "/"
    clause = " OR ".join("path = ? OR (path >= ? AND path < ?)" for _ in forms)
    return f" AND ({clause})", [v for form in forms for v in form]


class SqliteFiles(Connection):
    def _entry(self, row: Sequence[Any]) -> FileRecord:
        return FileRecord(loaded_path(self._column_path(row[0])), *row[1:6])

    def listing_by_digest(self, digest: bytes) -> int | None:
        """The id of the listing whose records hash to ``digest``, if stored."""
        found = self._query("SELECT id FROM listing WHERE digest = ?", (digest,))
        return int(found[0][0]) if found else None

    def add_listing(self, digest: bytes, records: Sequence[FileRecord]) -> int:
        """Store a new listing of ``records`` named ``digest``; returns its id. Run inside
        :meth:`writing`; the caller checked :meth:`listing_by_digest` first."""
        listing_id = self._insert(
            "INSERT INTO listing (digest, entries) VALUES (?, ?) RETURNING id",
            (digest, len(records)),
        )
        for start in range(0, len(records), _BATCH):
            self._executemany(
                "INSERT INTO file_entry (listing_id, path, kind, size, mtime_ns, inode, mode)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        listing_id,
                        self._bind_path(stored_path(r.path)),
                        r.kind,
                        r.size,
                        r.mtime_ns,
                        r.inode,
                        r.mode,
                    )
                    for r in records[start : start + _BATCH]
                ],
            )
        return listing_id

    def attach_listing(
        self, image_id: int, volume: str, fstype: str | None, listing_id: int
    ) -> None:
        """Say that ``volume`` of image ``image_id`` holds listing ``listing_id``."""
        self._execute(
            "INSERT INTO image_volume (image_id, volume, fstype, listing_id) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (image_id, volume) DO UPDATE SET fstype = excluded.fstype,"
            " listing_id = excluded.listing_id",
            (image_id, volume, fstype, listing_id),
        )

    def listing_of(self, image_id: int, volume: str) -> int | None:
        rows = self._query(
            "SELECT listing_id FROM image_volume WHERE image_id = ? AND volume = ?",
            (image_id, volume),
        )
        return int(rows[0][0]) if rows else None

    def image_volumes(self, image_id: int) -> list[VolumeListing]:
        """The catalogued volumes of image ``image_id``, by volume name."""
        rows = self._query(
            "SELECT volume, fstype, listing_id FROM image_volume WHERE image_id = ?"
            " ORDER BY volume",
            (image_id,),
        )
        return [VolumeListing(str(v), fstype, int(lid)) for v, fstype, lid in rows]

    def listing_entries(self, listing_id: int, prefix: str | None = None) -> Iterator[FileRecord]:
        """The entries of listing ``listing_id`` (only ``prefix`` and below it, if given) one
        by one in :func:`~vmaccel.catalog.index.records.path_order`. Holds the connection's
        lock until exhausted or closed; memory stays constant whatever the listing's size."""
        where, values = _prefix_filter(prefix)
        sql = f"SELECT {_ENTRY} FROM file_entry WHERE listing_id = ?{where} ORDER BY path"  # noqa: S608 - constant SQL only, values are bound
        for row in self._stream(sql, [listing_id, *map(self._bind_path, values)]):
            yield self._entry(row)

    def path_versions(self, path: str, vm: str | None) -> list[PathVersion]:
        """``path`` in every catalogued volume of every complete backup (of ``vm``, or all),
        ordered by VM, disk, volume, then backup start (oldest first)."""
        sql = (
            "SELECT b.id, b.vm, b.started, i.disk, v.volume,"
            " f.path, f.kind, f.size, f.mtime_ns, f.inode, f.mode"
            " FROM image_volume v JOIN image i ON i.id = v.image_id"
            " JOIN backup b ON b.id = i.backup_id"
            " LEFT JOIN file_entry f ON f.listing_id = v.listing_id AND f.path = ?"
            " WHERE b.state = ?"
        )
        params: list[Any] = [self._bind_path(stored_path(path)), COMPLETE]
        if vm is not None:
            sql += " AND b.vm = ?"
            params.append(vm)
        sql += " ORDER BY b.vm, i.disk, v.volume, b.started, b.id"
        return [
            PathVersion(
                int(row[0]),
                str(row[1]),
                float(row[2]),
                str(row[3]),
                str(row[4]),
                None if row[5] is None else self._entry(row[5:]),
            )
            for row in self._query(sql, params)
        ]

    def listing_ids(self) -> set[int]:
        """Every stored listing."""
        return {int(r[0]) for r in self._query("SELECT id FROM listing")}

    def listing_size(self, listing_id: int) -> int:
        """How many file entries listing ``listing_id`` holds (0 when it is gone)."""
        rows = self._query("SELECT COUNT(*) FROM file_entry WHERE listing_id = ?", (listing_id,))
        return int(rows[0][0])

    def search_files(self, like: str, vm: str | None, limit: int) -> list[FileHit]:
        """At most ``limit`` files of complete backups whose path matches the SQL LIKE
        pattern ``like`` (``\\`` escapes), of one VM or all, oldest backup first."""
        sql = (
            "SELECT b.id, b.vm, b.started, i.disk, v.volume, f.path, f.kind, f.size, f.mtime_ns"  # noqa: S608 - the LIKE clause is the dialect's constant
            " FROM file_entry f JOIN image_volume v ON v.listing_id = f.listing_id"
            " JOIN image i ON i.id = v.image_id JOIN backup b ON b.id = i.backup_id"
            f" WHERE b.state = ? AND {self._path_like()}"
        )
        params: list[Any] = [COMPLETE, like]
        if vm is not None:
            sql += " AND b.vm = ?"
            params.append(vm)
        sql += " ORDER BY b.started, b.id, i.disk, v.volume, f.path LIMIT ?"
        params.append(limit)
        return [
            FileHit(b, vm, t, disk, vol, loaded_path(self._column_path(path)), kind, size, mtime)
            for b, vm, t, disk, vol, path, kind, size, mtime in self._query(sql, params)
        ]

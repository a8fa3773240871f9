"""SQLite implementation of :class:`~vmaccel.catalog.index.protocols.FileIndex`: the file
catalog's ``listing``, ``file_entry`` and ``image_volume`` tables (see docs/format.md and
:mod:`vmaccel.catalog.filecatalog`, which holds the engine-neutral part)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vmaccel.catalog.index.connection import Connection
from vmaccel.catalog.index.records import COMPLETE, FileHit, FileRecord

_BATCH = 5000  # file entries per executemany


class SqliteFiles(Connection):
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
                "INSERT INTO file_entry (listing_id, path, kind, size, mtime_ns)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (listing_id, r.path, r.kind, r.size, r.mtime_ns)
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

    def listing_ids(self) -> set[int]:
        """Every stored listing."""
        return {int(r[0]) for r in self._query("SELECT id FROM listing")}

    def listing_size(self, listing_id: int) -> int:
        """How many file entries listing ``listing_id`` holds (0 when it is gone)."""
        rows = self._query(
            "SELECT COUNT(*) FROM file_entry WHERE listing_id = ?", (listing_id,)
        )
        return int(rows[0][0])

    def search_files(self, like: str, vm: str | None, limit: int) -> list[FileHit]:
        """At most ``limit`` files of complete backups whose path matches the SQL LIKE
        pattern ``like`` (``\\`` escapes), of one VM or all, oldest backup first."""
        sql = (
            "SELECT b.id, b.vm, b.started, i.disk, v.volume, f.path, f.kind, f.size, f.mtime_ns"
            " FROM file_entry f JOIN image_volume v ON v.listing_id = f.listing_id"
            " JOIN image i ON i.id = v.image_id JOIN backup b ON b.id = i.backup_id"
            " WHERE b.state = ? AND f.path LIKE ? ESCAPE '\\'"
        )
        params: list[Any] = [COMPLETE, like]
        if vm is not None:
            sql += " AND b.vm = ?"
            params.append(vm)
        sql += " ORDER BY b.started, b.id, i.disk, v.volume, f.path LIMIT ?"
        params.append(limit)
        return [FileHit(*row) for row in self._query(sql, params)]

"""SQLite implementation of :class:`~vmaccel.catalog.index.protocols.BackupIndex`: the
``backup`` and ``image`` tables (see docs/format.md). ``meta`` and ``stats`` columns hold the
JSON objects of :mod:`vmaccel.catalog.index.meta`, parsed tolerantly on every read."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from vmaccel.catalog.index.connection import Connection
from vmaccel.catalog.index.meta import BackupMeta, ImageMeta, ImageStats
from vmaccel.catalog.index.records import (
    COMPLETE,
    IN_PROGRESS,
    BackupHead,
    BackupRow,
    ImageRow,
    NewImage,
)
from vmaccel.vocabulary.errors import IndexCorrupt

_IMAGE_COLS = (
    "id, backup_id, disk, size, block_size, fanout, depth, root, parent_id, change_id, meta, stats"
)
_BACKUP_COLS = "id, uuid, vm, started, finished, state, meta"
_IMAGE_VALUES = (
    "backup_id, disk, size, block_size, fanout, depth, root, parent_id, change_id, meta, stats)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?"
)
# A new image leaves ``id`` to the engine (PostgreSQL's identity column takes no NULL).
_INSERT_IMAGE = f"INSERT INTO image ({_IMAGE_VALUES}) RETURNING id"
_RESTORE_IMAGE = f"INSERT INTO image (id, {_IMAGE_VALUES}, ?) RETURNING id"


def _dump(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True)


def _load(text: str, what: str) -> Mapping[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise IndexCorrupt(f"the {what} column of the catalog is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise IndexCorrupt(f"the {what} column of the catalog holds no JSON object")
    return doc


class SqliteBackups(Connection):
    def add_backup(self, uuid: str, vm: str, started: float, meta: BackupMeta) -> int:
        """Insert a backup in state ``in_progress``; returns its id."""
        return self._insert(
            "INSERT INTO backup (uuid, vm, started, state, meta) VALUES (?, ?, ?, ?, ?)"
            " RETURNING id",
            (uuid, vm, started, IN_PROGRESS, _dump(meta.to_json())),
        )

    def restore_backup(self, row: BackupRow) -> int:
        """Insert a backup exactly as described, keeping its id (used by rebuild-index).

        Ids are kept so backups keep the numbers users know them by, and images their
        ``parent_id`` links. (A PostgreSQL dialect must advance the id sequence afterwards.)
        """
        return self._insert(
            "INSERT INTO backup (id, uuid, vm, started, finished, state, meta)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                row.id,
                row.uuid,
                row.vm,
                row.started,
                row.finished,
                row.state,
                _dump(row.meta.to_json()),
            ),
        )

    def finish_backup(self, backup_id: int, finished: float, meta: BackupMeta) -> None:
        """Mark a backup complete at ``finished`` with its final ``meta``."""
        self._execute(
            "UPDATE backup SET state = ?, finished = ?, meta = ? WHERE id = ?",
            (COMPLETE, finished, _dump(meta.to_json()), backup_id),
        )

    def set_backup_state(self, backup_id: int, state: str) -> None:
        self._execute("UPDATE backup SET state = ? WHERE id = ?", (state, backup_id))

    def set_backup_meta(self, backup_id: int, meta: BackupMeta) -> None:
        """Replace the meta of a complete backup (a backup in any other state is left as is)."""
        self._execute(
            "UPDATE backup SET meta = ? WHERE id = ? AND state = ?",
            (_dump(meta.to_json()), backup_id, COMPLETE),
        )

    def delete_backup(self, backup_id: int) -> None:
        """Delete a backup, its images, and the file-catalog listings no image uses any more."""
        self._execute(
            "DELETE FROM image_volume WHERE image_id IN (SELECT id FROM image WHERE backup_id = ?)",
            (backup_id,),
        )
        unused = "SELECT id FROM listing WHERE id NOT IN (SELECT listing_id FROM image_volume)"
        self._execute(f"DELETE FROM file_entry WHERE listing_id IN ({unused})")  # noqa: S608 - constant SQL only, values are bound
        self._execute(f"DELETE FROM listing WHERE id IN ({unused})")  # noqa: S608 - constant SQL only, values are bound
        self._execute("DELETE FROM image WHERE backup_id = ?", (backup_id,))
        self._execute("DELETE FROM backup WHERE id = ?", (backup_id,))

    def backups(self, vm: str | None = None, state: str | None = COMPLETE) -> list[BackupRow]:
        """Backups oldest first, optionally of one VM and in one state (None: any state)."""
        clauses, params = [], []
        if vm is not None:
            clauses.append("vm = ?")
            params.append(vm)
        if state is not None:
            clauses.append("state = ?")
            params.append(state)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(
            f"SELECT {_BACKUP_COLS} FROM backup {where} ORDER BY started, id",  # noqa: S608 - constant SQL only, values are bound
            params,
        )
        return [_backup(r) for r in rows]

    def backup(self, backup_id: int) -> BackupRow | None:
        rows = self._query(f"SELECT {_BACKUP_COLS} FROM backup WHERE id = ?", (backup_id,))  # noqa: S608 - constant SQL only, values are bound
        return _backup(rows[0]) if rows else None

    def backup_by_uuid(self, uuid: str) -> BackupRow | None:
        rows = self._query(f"SELECT {_BACKUP_COLS} FROM backup WHERE uuid = ?", (uuid,))  # noqa: S608 - constant SQL only, values are bound
        return _backup(rows[0]) if rows else None

    def add_image(self, backup_id: int, image: NewImage) -> int:
        """Insert one image of backup ``backup_id``; returns its new id."""
        i = image
        return self._insert(
            _INSERT_IMAGE,
            (
                backup_id,
                i.disk,
                i.size,
                i.block_size,
                i.fanout,
                i.depth,
                i.root,
                i.parent_id,
                i.change_id,
                _dump(i.meta.to_json()),
                _dump(i.stats.to_json()),
            ),
        )

    def restore_image(self, row: ImageRow) -> int:
        """Insert an image exactly as described, keeping its id (used by rebuild-index)."""
        r = row
        return self._insert(
            _RESTORE_IMAGE,
            (
                r.id,
                r.backup_id,
                r.disk,
                r.size,
                r.block_size,
                r.fanout,
                r.depth,
                r.root,
                r.parent_id,
                r.change_id,
                _dump(r.meta.to_json()),
                _dump(r.stats.to_json()),
            ),
        )

    def images(self, backup_id: int | None = None) -> list[ImageRow]:
        """Images of one backup (by disk name), or of every non-deleted backup (by id)."""
        if backup_id is None:
            rows = self._query(
                f"SELECT {_IMAGE_COLS} FROM image WHERE backup_id IN"  # noqa: S608 - constant SQL only, values are bound
                " (SELECT id FROM backup WHERE state != 'deleting') ORDER BY id"
            )
        else:
            rows = self._query(
                f"SELECT {_IMAGE_COLS} FROM image WHERE backup_id = ? ORDER BY disk",  # noqa: S608 - constant SQL only, values are bound
                (backup_id,),
            )
        return [_image(r) for r in rows]

    def image(self, image_id: int) -> ImageRow | None:
        rows = self._query(f"SELECT {_IMAGE_COLS} FROM image WHERE id = ?", (image_id,))  # noqa: S608 - constant SQL only, values are bound
        return _image(rows[0]) if rows else None

    def backup_heads(self, vm: str | None = None) -> list[BackupHead]:
        """Id, VM and start time of every complete backup (of ``vm``, or all), oldest first
        (the order of :meth:`backups`), without their metadata: what paged lists count and
        slice before they read the rows of one page."""
        where, params = ("AND vm = ?", (vm,)) if vm is not None else ("", ())
        rows = self._query(
            f"SELECT id, vm, started FROM backup WHERE state = ? {where} ORDER BY started, id",  # noqa: S608 - constant SQL only, values are bound
            (COMPLETE, *params),
        )
        return [BackupHead(*r) for r in rows]

    def backup_page(
        self,
        vm: str | None,
        since: float | None,
        until: float | None,
        newest_first: bool,
        offset: int,
        limit: int,
    ) -> tuple[int, list[BackupRow]]:
        """(how many complete backups match, the ``limit`` of them from ``offset``): of
        ``vm`` (or all), started in [``since``, ``until``) (UNIX seconds), in the order of
        :meth:`backups` or its reverse. Counting and slicing happen in SQL, so a page costs
        the same with ten or ten thousand backups."""
        where, params = "state = ?", list[Any]([COMPLETE])
        for clause, value in (("vm = ?", vm), ("started >= ?", since), ("started < ?", until)):
            if value is not None:
                where += f" AND {clause}"
                params.append(value)
        (total,) = self._query(f"SELECT COUNT(*) FROM backup WHERE {where}", tuple(params))[0]  # noqa: S608 - constant SQL only, values are bound
        order = "started DESC, id DESC" if newest_first else "started, id"
        rows = self._query(
            f"SELECT {_BACKUP_COLS} FROM backup WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",  # noqa: S608 - constant SQL only, values are bound
            (*params, limit, offset),
        )
        return int(total), [_backup(r) for r in rows]

    def vm_backup_spans(self) -> list[tuple[str, int, float, float, int]]:
        """Per VM with complete backups, by name: (VM, how many, first and latest start time
        in UNIX seconds, id of the latest), in two grouped queries (no row per backup)."""
        spans = self._query(
            "SELECT vm, COUNT(*), MIN(started), MAX(started) FROM backup WHERE state = ?"
            " GROUP BY vm ORDER BY vm",
            (COMPLETE,),
        )
        latest = dict(
            self._query(
                "SELECT b.vm, MAX(b.id) FROM backup b JOIN (SELECT vm, MAX(started) AS s"
                " FROM backup WHERE state = ? GROUP BY vm) m ON b.vm = m.vm AND b.started = m.s"
                " WHERE b.state = ? GROUP BY b.vm",
                (COMPLETE, COMPLETE),
            )
        )
        return [(vm, int(n), float(a), float(z), int(latest[vm])) for vm, n, a, z in spans]

    def backup_totals(self) -> tuple[int, int, int, int]:
        """(backups, VMs, images, sum of image sizes in bytes) over complete backups."""
        backups, vms = self._query(
            "SELECT COUNT(*), COUNT(DISTINCT vm) FROM backup WHERE state = 'complete'"
        )[0]
        images, size = self._query(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM image WHERE backup_id IN"
            " (SELECT id FROM backup WHERE state = 'complete')"
        )[0]
        return int(backups), int(vms), int(images), int(size)


def _backup(r: Sequence[Any]) -> BackupRow:
    meta = BackupMeta.from_json(_load(r[6], "backup.meta"))
    return BackupRow(r[0], r[1], r[2], r[3], r[4], r[5], meta)


def _image(r: Sequence[Any]) -> ImageRow:
    meta = ImageMeta.from_json(_load(r[10], "image.meta"))
    stats = ImageStats.from_json(_load(r[11], "image.stats"))
    return ImageRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], meta, stats)

"""The SQLite catalog: the SQL of vmaccel lives in this module (and, for the file catalog, in
catalog/filecatalog.py, which runs its statements through :meth:`Index.query`).

The index is a cache of what the packs and backup manifests hold (``repo rebuild-index``
recreates it from them), kept in SQLite in WAL mode with ``synchronous=FULL`` so that a commit
that returned is durable. SQL is written portably (``ON CONFLICT``, no SQLite-only functions)
so a PostgreSQL dialect can follow. The schema is built by the migrations in
catalog/schema.py.

Tables: ``pack`` (one row per sealed pack), ``chunk`` (where each chunk id is stored),
``backup`` (one run of one VM; ``state`` is ``in_progress``, ``complete`` or ``deleting``),
``image`` (one disk of one backup: the root of its block map); the file catalog's
``listing``, ``file_entry`` and ``image_volume`` (see catalog/filecatalog.py).

Thread safety: one connection guarded by a lock; every method may be called from any thread.
The batched chunk lookups (``existing_chunks``, ``chunk_locations``) run on a small pool of
read-only connections instead, so image writer workers and image readers look up in parallel
and never wait for a write transaction (WAL: readers see the last commit).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from vmaccel.catalog.indexfile import database_error, open_index
from vmaccel.catalog.schema import migrations
from vmaccel.vocabulary.errors import IndexCorrupt


@dataclass(frozen=True)
class ChunkLocation:
    """Where a chunk is stored: pack name, payload offset and lengths in bytes, codec flags."""

    id: bytes
    pack: str
    offset: int
    stored_len: int
    raw_len: int
    kind: int
    flags: int
    crc: int


@dataclass(frozen=True)
class PackRow:
    id: int
    name: str
    size: int
    created: float
    state: str


@dataclass(frozen=True)
class BackupRow:
    """One backup as indexed. Times are UNIX seconds (UTC); ``meta`` is free-form JSON."""

    id: int
    uuid: str
    vm: str
    started: float
    finished: float | None
    state: str
    meta: dict[str, Any]


@dataclass(frozen=True)
class ImageRow:
    """One image: the block map root of one disk in one backup. Sizes in bytes."""

    id: int
    backup_id: int
    disk: str
    size: int
    block_size: int
    fanout: int
    depth: int
    root: bytes | None
    parent_id: int | None
    change_id: str | None
    meta: dict[str, Any]
    stats: dict[str, Any]


_CHUNK_COLS = 'c.id, p.name, c."offset", c.stored_len, c.raw_len, c.kind, c.flags, c.crc'
_IMAGE_COLS = (
    "id, backup_id, disk, size, block_size, fanout, depth, root, parent_id, change_id, meta, stats"
)
_BACKUP_COLS = "id, uuid, vm, started, finished, state, meta"
_ID_BATCH = 500  # ids per IN (...) query: under every engine's bound-parameter limit


class Index:
    """The catalog database of one repository.

    ``create=False`` (every command but ``repo init`` and ``repo rebuild-index``) opens an
    existing index and never creates one (see :func:`vmaccel.catalog.indexfile.open_index`).
    """

    def __init__(self, path: Path, create: bool = False) -> None:
        self.path = path
        self._conn = open_index(path, create)  # see catalog.indexfile
        self._lock = threading.RLock()
        self._readers: list[sqlite3.Connection] = []  # idle read-only connections (lookups)
        self._readers_lock = threading.Lock()
        self._closed = False

    def migrate(self) -> None:
        """Apply pending schema migrations (each in its own transaction)."""
        with self._lock:
            try:
                migrations.apply(sqlite_utils.Database(self._conn))
            except sqlite3.DatabaseError as exc:
                raise database_error(self.path, exc, "cannot be migrated") from exc

    def close(self) -> None:
        # Readers first: the last connection to close checkpoints the WAL into the database.
        with self._readers_lock:
            self._closed = True
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; commits (durably) on success, rolls back on any exception.

        A full disk (SQLite's SQLITE_FULL) becomes :class:`NoSpaceLeft`, with nothing committed.
        """
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:  # SQLite may have rolled back already
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                    raise
                raise database_error(self.path, exc, "cannot be written") from exc

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise IndexCorrupt(f"catalog query failed: {exc}") from exc

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                return self._conn.execute(sql, params)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                    raise
                raise database_error(self.path, exc, "cannot be written") from exc

    # Table modules (catalog/filecatalog.py) keep their statements next to their concept and
    # run them through these two; nothing else outside this module touches SQL.
    query = _query
    execute = _execute

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._lock:
            self._conn.executemany(sql, rows)

    # -- packs and chunks -------------------------------------------------------------------

    def add_pack(self, name: str, size: int, created: float, entries: Iterable[Any]) -> int:
        """Record a sealed, durable pack and its chunks. ``entries`` are ``PackEntry``s.

        A chunk id already present keeps its first location (a duplicate copy is garbage).
        Must run inside :meth:`transaction`.
        """
        cur = self._execute(
            "INSERT INTO pack (name, size, created) VALUES (?, ?, ?) RETURNING id",
            (name, size, created),
        )
        pack_id = int(cur.fetchone()[0])
        with self._lock:
            self._conn.executemany(
                'INSERT INTO chunk (id, pack_id, "offset", stored_len, raw_len, kind, flags, crc)'
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                [
                    (e.id, pack_id, e.offset, e.stored_len, e.raw_len, e.kind, e.flags, e.crc)
                    for e in entries
                ],
            )
        return pack_id

    def has_chunk(self, chunk_id: bytes) -> bool:
        return bool(self._query("SELECT 1 FROM chunk WHERE id = ?", (chunk_id,)))

    def chunk(self, chunk_id: bytes) -> ChunkLocation | None:
        rows = self._query(
            f"SELECT {_CHUNK_COLS} FROM chunk c JOIN pack p ON p.id = c.pack_id WHERE c.id = ?",  # noqa: S608 - constant SQL only, values are bound
            (chunk_id,),
        )
        return ChunkLocation(*rows[0]) if rows else None

    def chunks(self, kind: int | None = None) -> Iterator[ChunkLocation]:
        """Every chunk, in pack order (so a full read walks each pack sequentially)."""
        where = "" if kind is None else f"WHERE c.kind = {int(kind)}"
        rows = self._query(
            f"SELECT {_CHUNK_COLS} FROM chunk c JOIN pack p ON p.id = c.pack_id {where}"  # noqa: S608 - constant SQL and int(kind); values bound
            ' ORDER BY p.name, c."offset"'
        )
        return (ChunkLocation(*r) for r in rows)

    def chunks_in_pack(self, pack_id: int) -> list[ChunkLocation]:
        rows = self._query(
            f"SELECT {_CHUNK_COLS} FROM chunk c JOIN pack p ON p.id = c.pack_id"  # noqa: S608 - constant SQL only, values are bound
            ' WHERE c.pack_id = ? ORDER BY c."offset"',
            (pack_id,),
        )
        return [ChunkLocation(*r) for r in rows]

    def delete_chunks(self, ids: Iterable[bytes]) -> None:
        with self._lock:
            self._conn.executemany("DELETE FROM chunk WHERE id = ?", ((i,) for i in ids))

    def move_chunks(self, pack_id: int, entries: Iterable[Any]) -> None:
        """Point existing chunk rows at their new copies in pack ``pack_id`` (repacking)."""
        with self._lock:
            self._conn.executemany(
                'UPDATE chunk SET pack_id = ?, "offset" = ?, stored_len = ?, crc = ? WHERE id = ?',
                [(pack_id, e.offset, e.stored_len, e.crc, e.id) for e in entries],
            )

    def packs(self, state: str | None = None) -> list[PackRow]:
        where, params = ("WHERE state = ?", (state,)) if state else ("", ())
        rows = self._query(
            f"SELECT id, name, size, created, state FROM pack {where} ORDER BY name",  # noqa: S608 - constant SQL only, values are bound
            params,
        )
        return [PackRow(*r) for r in rows]

    def set_pack_state(self, pack_id: int, state: str) -> None:
        self._execute("UPDATE pack SET state = ? WHERE id = ?", (state, pack_id))

    def delete_pack(self, pack_id: int) -> None:
        self._execute("DELETE FROM chunk WHERE pack_id = ?", (pack_id,))
        self._execute("DELETE FROM pack WHERE id = ?", (pack_id,))

    def pack_usage(self) -> dict[int, tuple[int, int]]:
        """pack id -> (chunk count, stored bytes of its chunks, headers excluded)."""
        rows = self._query("SELECT pack_id, COUNT(*), SUM(stored_len) FROM chunk GROUP BY pack_id")
        return {int(p): (int(n), int(b)) for p, n, b in rows}

    def missing_chunks(self, ids: set[bytes]) -> set[bytes]:
        """Those of ``ids`` that have no chunk row: one scan of the chunk ids (no per-id
        queries), so its cost is one pass over the table whatever the size of ``ids``."""
        missing = set(ids)
        with self._lock:
            try:
                for (cid,) in self._conn.execute("SELECT id FROM chunk"):
                    missing.discard(bytes(cid))
            except sqlite3.DatabaseError as exc:
                raise IndexCorrupt(f"catalog query failed: {exc}") from exc
        return missing

    def chunk_totals(self) -> tuple[int, int, int]:
        """(chunk count, stored bytes, raw bytes) over every data chunk."""
        n, stored, raw = self._query(
            "SELECT COUNT(*), COALESCE(SUM(stored_len), 0), COALESCE(SUM(raw_len), 0)"
            " FROM chunk WHERE kind = 1"
        )[0]
        return int(n), int(stored), int(raw)

    # -- backups and images -----------------------------------------------------------------

    def add_backup(self, uuid: str, vm: str, started: float, meta: dict[str, Any]) -> int:
        cur = self._execute(
            "INSERT INTO backup (uuid, vm, started, state, meta) VALUES (?, ?, ?, ?, ?)"
            " RETURNING id",
            (uuid, vm, started, "in_progress", json.dumps(meta, sort_keys=True)),
        )
        return int(cur.fetchone()[0])

    def restore_backup(self, row: BackupRow) -> int:
        """Insert a backup exactly as described, keeping its id (used by rebuild-index).

        Ids are kept so backups keep the numbers users know them by, and images their
        ``parent_id`` links. (A PostgreSQL dialect must advance the id sequence afterwards.)
        """
        cur = self._execute(
            "INSERT INTO backup (id, uuid, vm, started, finished, state, meta)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                row.id,
                row.uuid,
                row.vm,
                row.started,
                row.finished,
                row.state,
                json.dumps(row.meta, sort_keys=True),
            ),
        )
        return int(cur.fetchone()[0])

    def finish_backup(self, backup_id: int, finished: float, meta: dict[str, Any]) -> None:
        self._execute(
            "UPDATE backup SET state = 'complete', finished = ?, meta = ? WHERE id = ?",
            (finished, json.dumps(meta, sort_keys=True), backup_id),
        )

    def set_backup_state(self, backup_id: int, state: str) -> None:
        self._execute("UPDATE backup SET state = ? WHERE id = ?", (state, backup_id))

    def set_backup_meta(self, backup_id: int, meta: dict[str, Any]) -> None:
        """Replace the meta of a complete backup (a backup in any other state is left as is)."""
        self._execute(
            "UPDATE backup SET meta = ? WHERE id = ? AND state = 'complete'",
            (json.dumps(meta, sort_keys=True), backup_id),
        )

    def delete_backup(self, backup_id: int) -> None:
        self._execute(
            "DELETE FROM image_volume WHERE image_id IN (SELECT id FROM image WHERE backup_id = ?)",
            (backup_id,),
        )
        unused = "SELECT id FROM listing WHERE id NOT IN (SELECT listing_id FROM image_volume)"
        self._execute(f"DELETE FROM file_entry WHERE listing_id IN ({unused})")  # noqa: S608 - constant SQL only, values are bound
        self._execute(f"DELETE FROM listing WHERE id IN ({unused})")  # noqa: S608 - constant SQL only, values are bound
        self._execute("DELETE FROM image WHERE backup_id = ?", (backup_id,))
        self._execute("DELETE FROM backup WHERE id = ?", (backup_id,))

    def backups(self, vm: str | None = None, state: str | None = "complete") -> list[BackupRow]:
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

    def add_image(self, backup_id: int, img: dict[str, Any]) -> int:
        """Insert one image row; ``img`` has the ImageRow fields except ``id``/``backup_id``."""
        cur = self._execute(
            "INSERT INTO image (backup_id, disk, size, block_size, fanout, depth, root,"
            " parent_id, change_id, meta, stats) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " RETURNING id",
            (
                backup_id,
                img["disk"],
                img["size"],
                img["block_size"],
                img["fanout"],
                img["depth"],
                img["root"],
                img.get("parent_id"),
                img.get("change_id"),
                json.dumps(img.get("meta", {}), sort_keys=True),
                json.dumps(img.get("stats", {}), sort_keys=True),
            ),
        )
        return int(cur.fetchone()[0])

    def images(self, backup_id: int | None = None) -> list[ImageRow]:
        """Images of one backup (by disk name), or of every non-deleted backup."""
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

    # -- maintenance queries (verify, stats, rebuild-index) ------------------------------------

    def chunk_kinds(self, ids: Iterable[bytes]) -> dict[bytes, int]:
        """id -> kind for those of ``ids`` that have a chunk row (absent ids are missing)."""
        wanted = list(dict.fromkeys(ids))
        found: dict[bytes, int] = {}
        for start in range(0, len(wanted), _ID_BATCH):
            batch = wanted[start : start + _ID_BATCH]
            marks = ", ".join("?" * len(batch))
            for cid, kind in self._query(
                f"SELECT id, kind FROM chunk WHERE id IN ({marks})",  # noqa: S608 - constant SQL only, values are bound
                batch,
            ):
                found[bytes(cid)] = int(kind)
        return found

    def chunk_totals_by_kind(self) -> dict[int, tuple[int, int, int]]:
        """kind -> (chunk count, stored bytes, raw bytes), over every chunk row."""
        rows = self._query(
            "SELECT kind, COUNT(*), COALESCE(SUM(stored_len), 0), COALESCE(SUM(raw_len), 0)"
            " FROM chunk GROUP BY kind"
        )
        return {int(k): (int(n), int(s), int(r)) for k, n, s, r in rows}

    def pack_totals(self) -> tuple[int, int]:
        """(pack count, bytes of every pack as recorded at sealing)."""
        n, size = self._query("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM pack")[0]
        return int(n), int(size)

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

    def restore_image(self, row: ImageRow) -> int:
        """Insert an image exactly as described, keeping its id (used by rebuild-index)."""
        cur = self._execute(
            "INSERT INTO image (id, backup_id, disk, size, block_size, fanout, depth, root,"
            " parent_id, change_id, meta, stats) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " RETURNING id",
            (
                row.id,
                row.backup_id,
                row.disk,
                row.size,
                row.block_size,
                row.fanout,
                row.depth,
                row.root,
                row.parent_id,
                row.change_id,
                json.dumps(row.meta, sort_keys=True),
                json.dumps(row.stats, sort_keys=True),
            ),
        )
        return int(cur.fetchone()[0])

    # -- concurrent chunk lookups (image writer workers, image readers) --------------------------

    def existing_chunks(self, ids: Iterable[bytes]) -> set[bytes]:
        """The subset of ``ids`` that has a committed chunk row. Batched (one query per
        ``_ID_BATCH`` ids) on a read-only connection of its own, so it neither takes nor waits
        for the main connection's lock (a writer committing with fsync does not stall it)."""
        wanted = list(dict.fromkeys(ids))
        found: set[bytes] = set()
        for start in range(0, len(wanted), _ID_BATCH):
            batch = wanted[start : start + _ID_BATCH]
            marks = ", ".join("?" * len(batch))
            rows = self._read(f"SELECT id FROM chunk WHERE id IN ({marks})", batch)  # noqa: S608 - constant SQL only, values are bound
            found.update(bytes(r[0]) for r in rows)
        return found

    def chunk_locations(self, ids: Iterable[bytes]) -> dict[bytes, ChunkLocation]:
        """id -> location for those of ``ids`` that are committed (absent ids are missing);
        batched like :meth:`existing_chunks`, on a read-only connection."""
        wanted = list(dict.fromkeys(ids))
        found: dict[bytes, ChunkLocation] = {}
        for start in range(0, len(wanted), _ID_BATCH):
            batch = wanted[start : start + _ID_BATCH]
            marks = ", ".join("?" * len(batch))
            for r in self._read(
                f"SELECT {_CHUNK_COLS} FROM chunk c JOIN pack p ON p.id = c.pack_id"  # noqa: S608 - constant SQL only, values are bound
                f" WHERE c.id IN ({marks})",
                batch,
            ):
                found[bytes(r[0])] = ChunkLocation(*r)
        return found

    def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Run one query on an idle read-only connection (opened on demand, kept for reuse).

        WAL lets these readers run beside the writer; each statement sees the last commit,
        never the writer's open transaction. At most one connection per concurrent caller.
        """
        with self._readers_lock:
            conn = self._readers.pop() if self._readers else None
        try:
            if conn is None:
                conn = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=30,
                )
            return conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise IndexCorrupt(f"catalog query failed: {exc}") from exc
        finally:
            if conn is not None:
                with self._readers_lock:
                    if self._closed:  # closed meanwhile: do not keep it
                        conn.close()
                    else:
                        self._readers.append(conn)


def _backup(r: Sequence[Any]) -> BackupRow:
    return BackupRow(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]))


def _image(r: Sequence[Any]) -> ImageRow:
    return ImageRow(
        r[0],
        r[1],
        r[2],
        r[3],
        r[4],
        r[5],
        r[6],
        r[7],
        r[8],
        r[9],
        json.loads(r[10]),
        json.loads(r[11]),
    )

"""SQLite implementation of :class:`~vmaccel.catalog.index.protocols.ChunkIndex`: the
``pack`` and ``chunk`` tables (see docs/format.md).

Condemned chunks (``chunk.condemned`` not NULL, set by gc) are hidden from the dedup lookups
of writers (:meth:`SqliteChunks.has_chunk`, :meth:`SqliteChunks.existing_chunks`) but still
seen by readers (:meth:`SqliteChunks.chunk`, :meth:`SqliteChunks.chunk_locations`); adding a
pack that holds one again resurrects it. gc's deletes and moves of chunk rows are conditional
(on ``pack_id`` and, for deletes, on ``condemned``), so a resurrection racing gc wins."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from vmaccel.catalog.index.connection import ID_BATCH, Connection, marks
from vmaccel.catalog.index.records import ChunkLocation, PackRow
from vmaccel.catalog.pack import PackEntry

_CHUNK_COLS = 'c.id, p.name, c."offset", c.stored_len, c.raw_len, c.kind, c.flags, c.crc'
_CHUNK_FROM = f"SELECT {_CHUNK_COLS} FROM chunk c JOIN pack p ON p.id = c.pack_id"  # noqa: S608 - constant SQL only


class SqliteChunks(Connection):
    def add_pack(
        self, name: str, size: int, created: float, entries: Iterable[PackEntry]
    ) -> int:
        """Record a sealed, durable pack and its chunks.

        A chunk id already present keeps its first location (a duplicate copy is garbage),
        unless that row is condemned: then it is resurrected, pointed at this pack with
        ``condemned`` cleared (a writer that could not see it stored it again).
        Must run inside :meth:`writing`.
        """
        pack_id = self._insert(
            "INSERT INTO pack (name, size, created) VALUES (?, ?, ?) RETURNING id",
            (name, size, created),
        )
        self._executemany(
            'INSERT INTO chunk (id, pack_id, "offset", stored_len, raw_len, kind, flags, crc)'
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
            ' pack_id = excluded.pack_id, "offset" = excluded."offset",'
            " stored_len = excluded.stored_len, raw_len = excluded.raw_len,"
            " kind = excluded.kind, flags = excluded.flags, crc = excluded.crc,"
            " condemned = NULL WHERE chunk.condemned IS NOT NULL",
            [
                (e.id, pack_id, e.offset, e.stored_len, e.raw_len, e.kind, e.flags, e.crc)
                for e in entries
            ],
        )
        return pack_id

    def has_chunk(self, chunk_id: bytes) -> bool:
        """Whether a writer may deduplicate against ``chunk_id`` (a row, not condemned)."""
        return bool(
            self._query("SELECT 1 FROM chunk WHERE id = ? AND condemned IS NULL", (chunk_id,))
        )

    def chunk(self, chunk_id: bytes) -> ChunkLocation | None:
        rows = self._query(f"{_CHUNK_FROM} WHERE c.id = ?", (chunk_id,))
        return ChunkLocation(*rows[0]) if rows else None

    def chunks(self, kind: int | None = None) -> Iterator[ChunkLocation]:
        """Every chunk (of one kind), in pack order (so a full read walks each pack
        sequentially)."""
        where, params = ("", ()) if kind is None else ("WHERE c.kind = ?", (int(kind),))
        rows = self._query(f'{_CHUNK_FROM} {where} ORDER BY p.name, c."offset"', params)
        return (ChunkLocation(*r) for r in rows)

    def chunks_in_pack(self, pack_id: int) -> list[ChunkLocation]:
        rows = self._query(f'{_CHUNK_FROM} WHERE c.pack_id = ? ORDER BY c."offset"', (pack_id,))
        return [ChunkLocation(*r) for r in rows]

    def delete_chunks(self, ids: Iterable[bytes]) -> None:
        """Delete chunk rows unconditionally (tests and repairs; gc uses
        :meth:`delete_condemned`)."""
        self._executemany("DELETE FROM chunk WHERE id = ?", ((i,) for i in ids))

    def delete_condemned(self, pack_id: int, ids: Iterable[bytes]) -> int:
        """Delete those of ``ids`` that are still condemned and still in pack ``pack_id`` (a
        resurrected row is neither); returns how many rows went."""
        return self._executemany(
            "DELETE FROM chunk WHERE id = ? AND condemned IS NOT NULL AND pack_id = ?",
            ((i, pack_id) for i in ids),
        ).rowcount

    def condemn_chunks(self, ids: Iterable[bytes], mark: int) -> int:
        """Set ``condemned = mark`` on those of ``ids`` not condemned yet; returns how many.
        Must run inside :meth:`writing` (gc passes :meth:`last_lease_id` read there)."""
        return self._executemany(
            "UPDATE chunk SET condemned = ? WHERE id = ? AND condemned IS NULL",
            ((mark, i) for i in ids),
        ).rowcount

    def absolve_chunks(self, ids: Iterable[bytes]) -> None:
        """Clear ``condemned`` on ``ids`` (gc found them referenced again)."""
        self._executemany("UPDATE chunk SET condemned = NULL WHERE id = ?", ((i,) for i in ids))

    def absolve_since(self, lease_id: int) -> int:
        """Clear ``condemned`` on every chunk condemned with a value >= ``lease_id`` (what a
        backup of that lease may reference; absolving more is harmless: the next gc condemns
        again). Returns how many. Must run inside :meth:`writing`."""
        return self._execute(
            "UPDATE chunk SET condemned = NULL WHERE condemned >= ?", (lease_id,)
        ).rowcount

    def condemned_chunks(self) -> dict[bytes, int]:
        """id -> ``condemned`` value of every condemned chunk."""
        rows = self._query("SELECT id, condemned FROM chunk WHERE condemned IS NOT NULL")
        return {bytes(cid): int(m) for cid, m in rows}

    def move_chunks(
        self, pack_id: int, entries: Iterable[PackEntry], sources: Mapping[bytes, int]
    ) -> None:
        """Point chunk rows at their new copies in pack ``pack_id`` (repacking), each only if
        it is still in its source pack ``sources[id]`` (a resurrected row stays where it is)."""
        self._executemany(
            'UPDATE chunk SET pack_id = ?, "offset" = ?, stored_len = ?, crc = ?'
            " WHERE id = ? AND pack_id = ?",
            [(pack_id, e.offset, e.stored_len, e.crc, e.id, sources[e.id]) for e in entries],
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

    def retire_pack(self, pack_id: int) -> bool:
        """Mark pack ``pack_id`` ``deleting`` if no chunk row names it; returns whether it was.
        Must run inside :meth:`writing`."""
        cur = self._execute(
            "UPDATE pack SET state = 'deleting' WHERE id = ?"
            " AND NOT EXISTS (SELECT 1 FROM chunk WHERE pack_id = ?)",
            (pack_id, pack_id),
        )
        return cur.rowcount > 0

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
        for (cid,) in self._scan("SELECT id FROM chunk"):
            missing.discard(bytes(cid))
        return missing

    def chunk_totals(self) -> tuple[int, int, int]:
        """(chunk count, stored bytes, raw bytes) over every data chunk."""
        n, stored, raw = self._query(
            "SELECT COUNT(*), COALESCE(SUM(stored_len), 0), COALESCE(SUM(raw_len), 0)"
            " FROM chunk WHERE kind = 1"
        )[0]
        return int(n), int(stored), int(raw)

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

    def chunk_kinds(self, ids: Iterable[bytes]) -> dict[bytes, int]:
        """id -> kind for those of ``ids`` that have a chunk row (absent ids are missing)."""
        wanted = list(dict.fromkeys(ids))
        found: dict[bytes, int] = {}
        for start in range(0, len(wanted), ID_BATCH):
            batch = wanted[start : start + ID_BATCH]
            sql = f"SELECT id, kind FROM chunk WHERE id IN ({marks(len(batch))})"  # noqa: S608 - constant SQL only, values are bound
            for cid, kind in self._query(sql, batch):
                found[bytes(cid)] = int(kind)
        return found

    def existing_chunks(self, ids: Iterable[bytes]) -> set[bytes]:
        """The subset of ``ids`` a writer may deduplicate against: committed rows that are not
        condemned (see the module docstring). Batched (one query per
        ``ID_BATCH`` ids) on a read-only connection of its own, so it neither takes nor waits
        for the main connection's lock (a writer committing with fsync does not stall it)."""
        wanted = list(dict.fromkeys(ids))
        found: set[bytes] = set()
        for start in range(0, len(wanted), ID_BATCH):
            batch = wanted[start : start + ID_BATCH]
            sql = f"SELECT id FROM chunk WHERE id IN ({marks(len(batch))}) AND condemned IS NULL"  # noqa: S608 - constant SQL only, values are bound
            found.update(bytes(r[0]) for r in self._read(sql, batch))
        return found

    def chunk_locations(self, ids: Iterable[bytes]) -> dict[bytes, ChunkLocation]:
        """id -> location for those of ``ids`` that are committed (absent ids are missing);
        batched like :meth:`existing_chunks`, on a read-only connection."""
        wanted = list(dict.fromkeys(ids))
        found: dict[bytes, ChunkLocation] = {}
        for start in range(0, len(wanted), ID_BATCH):
            batch = wanted[start : start + ID_BATCH]
            sql = f"{_CHUNK_FROM} WHERE c.id IN ({marks(len(batch))})"
            for r in self._read(sql, batch):
                found[bytes(r[0])] = ChunkLocation(*r)
        return found

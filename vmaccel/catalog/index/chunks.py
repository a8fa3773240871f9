"""SQLite implementation of :class:`~vmaccel.catalog.index.protocols.ChunkIndex`: the
``pack`` and ``chunk`` tables (see docs/format.md)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

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

        A chunk id already present keeps its first location (a duplicate copy is garbage).
        Must run inside :meth:`writing`.
        """
        pack_id = self._insert(
            "INSERT INTO pack (name, size, created) VALUES (?, ?, ?) RETURNING id",
            (name, size, created),
        )
        self._executemany(
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
        self._executemany("DELETE FROM chunk WHERE id = ?", ((i,) for i in ids))

    def move_chunks(self, pack_id: int, entries: Iterable[PackEntry]) -> None:
        """Point existing chunk rows at their new copies in pack ``pack_id`` (repacking)."""
        self._executemany(
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
        """The subset of ``ids`` that has a committed chunk row. Batched (one query per
        ``ID_BATCH`` ids) on a read-only connection of its own, so it neither takes nor waits
        for the main connection's lock (a writer committing with fsync does not stall it)."""
        wanted = list(dict.fromkeys(ids))
        found: set[bytes] = set()
        for start in range(0, len(wanted), ID_BATCH):
            batch = wanted[start : start + ID_BATCH]
            sql = f"SELECT id FROM chunk WHERE id IN ({marks(len(batch))})"  # noqa: S608 - constant SQL only, values are bound
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

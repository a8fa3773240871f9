"""Copying every row of a SQLite catalog into a new PostgreSQL one (``repo migrate``).

Contract of :func:`copy_catalog`:

* the source is read in one SQLite read transaction: the copy is a snapshot, and rows
  committed meanwhile (by a process that takes none of the locks the caller holds, e.g. a
  policy edit) are not in it;
* the destination is a catalog freshly made by the same migrations (``repo init --catalog``
  makes it) whose tables are empty; every row goes in one PostgreSQL transaction, so an
  interrupted copy commits nothing;
* every table is copied, with every id kept; the tables and their order come from the
  destination's own schema (a table after every table its foreign keys name), so a table
  that a later migration adds is copied without a change here. The two schemas must have
  the same tables and columns (a source with pending migrations is refused first);
* afterwards every identity sequence stands at the highest id the source ever issued
  (SQLite's ``sqlite_sequence`` included: ids of deleted backups, jobs or leases are never
  reused), and ``lease_counter`` at the source's last lease id (gc compares the lease ids
  that condemned chunks hold with it, see catalog.condemn).

The one dialect difference in the data is ``file_entry.path`` (see
:mod:`~vmaccel.catalog.index.pgschema`), bound as the PostgreSQL index binds it. Rows go
through PostgreSQL's ``COPY``, in constant memory.
"""

from __future__ import annotations

import contextlib
import graphlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vmaccel.catalog.index.pgschema import TABLE as PG_MIGRATIONS
from vmaccel.vocabulary.errors import IndexCorrupt, RepositoryExists, UsageError

if TYPE_CHECKING:  # psycopg loads only when a PostgreSQL catalog is used
    from vmaccel.catalog.index.postgres import PgIndex
    from vmaccel.catalog.index.sqlite import Index

logger = logging.getLogger(__name__)

# Bookkeeping of each engine: never copied (the destination's own migrations made its own).
INTERNAL = frozenset({"_sqlite_migrations", "sqlite_sequence", PG_MIGRATIONS, "lease_counter"})
PATH_COLUMNS = frozenset({("file_entry", "path")})  # stored as the dialect binds paths


@dataclass(frozen=True)
class TableCopy:
    """One table to copy: its ``columns`` (the same in both schemas) and its ``rows``."""

    table: str
    columns: tuple[str, ...]
    rows: int


def copy_catalog(source: Index, dest: PgIndex) -> list[TableCopy]:
    """Copy every row of ``source`` into ``dest`` (see the module docstring); returns what
    was copied, table by table in copy order. Raises :class:`UsageError` for a source with
    pending migrations, :class:`RepositoryExists` when ``dest`` holds rows, and
    :class:`IndexCorrupt` when the schemas differ. Durable when it returns."""
    check_source(source)
    with _snapshot(source):
        plan = plan_copy(source, dest)
        with dest.writing():
            for table in plan:
                logger.info("copying %d rows of %s", table.rows, table.table)
                _copy_table(source, dest, table)
            _advance_counters(source, dest)
    return plan


def check_source(source: Index) -> None:
    """Refuse (:class:`UsageError`) a source whose schema is behind this vmaccel's."""
    if source.pending_migrations():
        raise UsageError(
            f"the catalog {source.path} was written by an older vmaccel and has pending schema"
            " migrations: run `vmaccel gc --dry-run` on it once, then migrate"
        )


@contextlib.contextmanager
def _snapshot(source: Index) -> Iterator[None]:
    """One read transaction on the source (WAL: a consistent snapshot, no write lock)."""
    with source._lock:
        source._execute("BEGIN")
        try:
            yield
        finally:
            source._execute("ROLLBACK")


def plan_copy(source: Index, dest: PgIndex) -> list[TableCopy]:
    """The tables to copy in foreign-key order, with their source row counts."""
    have = _sqlite_columns(source)
    want = _pg_columns(dest)
    if set(have) != set(want):
        extra, missing = sorted(set(have) - set(want)), sorted(set(want) - set(have))
        raise IndexCorrupt(
            f"the catalogs differ: tables only in {source.path}: {extra or 'none'}, only in"
            f" {dest.path}: {missing or 'none'}; is this vmaccel older than the repository?"
        )
    plan = []
    for table in _dependency_order(dest, set(want)):
        if set(have[table]) != set(want[table]):
            raise IndexCorrupt(
                f"table {table} has columns {sorted(have[table])} in {source.path} but"
                f" {sorted(want[table])} in {dest.path}"
            )
        if dest._query(f'SELECT 1 FROM "{table}" LIMIT 1'):  # noqa: S608 - a schema name
            raise RepositoryExists(f"table {table} of {dest.path} holds rows already")
        rows = int(source._query(f'SELECT COUNT(*) FROM "{table}"')[0][0])  # noqa: S608
        plan.append(TableCopy(table, want[table], rows))
    return plan


def _sqlite_columns(source: Index) -> dict[str, tuple[str, ...]]:
    tables = source._query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    names = [str(r[0]) for r in tables if str(r[0]) not in INTERNAL]
    return {
        t: tuple(str(r[0]) for r in source._query("SELECT name FROM pragma_table_info(?)", (t,)))
        for t in names
    }


def _pg_columns(dest: PgIndex) -> dict[str, tuple[str, ...]]:
    rows = dest._query(
        "SELECT c.table_name, c.column_name FROM information_schema.columns c"
        " JOIN information_schema.tables t ON t.table_schema = c.table_schema"
        " AND t.table_name = c.table_name AND t.table_type = 'BASE TABLE'"
        " WHERE c.table_schema = current_schema() ORDER BY c.table_name, c.ordinal_position"
    )
    out: dict[str, tuple[str, ...]] = {}
    for table, column in rows:
        if str(table) not in INTERNAL:
            out[str(table)] = (*out.get(str(table), ()), str(column))
    return out


def _dependency_order(dest: PgIndex, tables: set[str]) -> list[str]:
    """``tables`` with every table after the tables its foreign keys reference (ties by
    name, so the order is the same on every run)."""
    edges = dest._query(
        "SELECT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c"
        " JOIN pg_namespace n ON n.oid = c.connamespace"
        " WHERE c.contype = 'f' AND n.nspname = current_schema()"
    )
    graph: dict[str, set[str]] = {t: set() for t in tables}
    for child, parent in edges:
        if str(child) in graph and str(parent) != str(child):
            graph[str(child)].add(str(parent))
    order: list[str] = []
    sorter = graphlib.TopologicalSorter(graph)
    sorter.prepare()
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        order += ready
        sorter.done(*ready)
    return order


def _copy_table(source: Index, dest: PgIndex, table: TableCopy) -> None:
    names = ", ".join(f'"{c}"' for c in table.columns)
    paths = [i for i, c in enumerate(table.columns) if (table.table, c) in PATH_COLUMNS]
    done = 0
    rows = source._scan(f'SELECT {names} FROM "{table.table}"')  # noqa: S608 - schema names
    with (
        dest._errors("cannot be written"),
        dest._pg.cursor() as cur,
        cur.copy(f'COPY "{table.table}" ({names}) FROM STDIN') as copy,
    ):
        for row in rows:
            copy.write_row(_bound(dest, row, paths) if paths else row)
            done += 1
    if done != table.rows:
        raise IndexCorrupt(f"table {table.table} gave {done} rows, {table.rows} counted")


def _bound(dest: PgIndex, row: Any, paths: list[int]) -> list[Any]:
    values = list(row)
    for i in paths:
        values[i] = dest._bind_path(values[i])
    return values


def _advance_counters(source: Index, dest: PgIndex) -> None:
    """Identity sequences past every id the source issued; ``lease_counter`` to its last."""
    issued = {str(n): int(s) for n, s in source._query("SELECT name, seq FROM sqlite_sequence")}
    identities = dest._query(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND is_identity = 'YES'"
    )
    for table, column in identities:
        top = dest._query(f'SELECT MAX("{column}") FROM "{table}"')[0][0]  # noqa: S608
        high = max(int(top or 0), issued.get(str(table), 0))
        if high:
            dest._query(
                "SELECT setval(pg_get_serial_sequence(?, ?), ?)", (f'"{table}"', column, high)
            )
    dest._execute("UPDATE lease_counter SET last = GREATEST(last, ?)", (source.last_lease_id(),))

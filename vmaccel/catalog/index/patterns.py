"""Accepted anomaly patterns: the ``anomaly_pattern`` table (migration ``0009_anomaly_patterns``).

One row per ``backups ack --pattern``: the VM, the backup the pattern was taken from, when
(UNIX seconds, UTC), and its findings as JSON (their form and the matching rule:
:mod:`vmaccel.catalog.anomalypatterns`). Rows live in the index only: ``repo rebuild-index``
does not bring them back (the packs and manifests never held them); acknowledge again after a
rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmaccel.catalog.index.connection import Connection

_SELECT = "SELECT id, vm, backup_id, created, findings FROM anomaly_pattern"


@dataclass(frozen=True)
class PatternRow:
    """One accepted pattern as indexed; ``findings`` is the stored JSON text."""

    id: int
    vm: str
    backup_id: int
    created: float
    findings: str


class SqlitePatterns(Connection):
    def add_pattern(self, vm: str, backup_id: int, created: float, findings: str) -> int:
        """Record an accepted pattern; returns its id. Must run inside :meth:`writing`."""
        return self._insert(
            "INSERT INTO anomaly_pattern (vm, backup_id, created, findings)"
            " VALUES (?, ?, ?, ?) RETURNING id",
            (vm, backup_id, created, findings),
        )

    def patterns(self, vm: str | None = None) -> list[PatternRow]:
        """The accepted patterns (of ``vm``, or all), by id. An index not yet migrated to
        hold patterns holds none."""
        if not self._has_patterns():
            return []
        if vm is None:
            return [PatternRow(*r) for r in self._query(_SELECT + " ORDER BY id")]
        rows = self._query(_SELECT + " WHERE vm = ? ORDER BY id", (vm,))
        return [PatternRow(*r) for r in rows]

    def delete_pattern(self, pattern_id: int) -> bool:
        """Forget an accepted pattern; False when there was none with that id. Must run
        inside :meth:`writing`."""
        if not self._query("SELECT 1 FROM anomaly_pattern WHERE id = ?", (pattern_id,)):
            return False
        self._execute("DELETE FROM anomaly_pattern WHERE id = ?", (pattern_id,))
        return True

    def _has_patterns(self) -> bool:
        rows = self._query(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'anomaly_pattern'"
        )
        return bool(rows)

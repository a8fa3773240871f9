"""Attempt reports: the ``attempt_report`` table (migration ``0010_attempt_reports``).

A policy run whose VMs are backed up by proxies (``vmaccel worker``) hands each attempt of a
VM job to the queue; the proxy that runs it stores what happened here, one row per
``(vm_job_id, attempt)``: the proxy's name, when (UNIX seconds) and the report as JSON (its form
is the plugin's :class:`~vmaccel.plugin.engine.report.VmReport`, see its ``to_json``). The
first report of an attempt wins: a second one (a job taken over by another proxy after the
first one had already reported) is refused, so the run records each attempt once. Like the
job rows, reports live in the index only.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmaccel.catalog.index.connection import Connection


@dataclass(frozen=True)
class ReportRow:
    """One attempt's report as stored; ``report`` is the JSON text."""

    vm_job_id: int
    attempt: int
    worker: str
    reported: float
    report: str


class SqliteReports(Connection):
    def add_report(self, row: ReportRow) -> bool:
        """Store an attempt's report; False (nothing changed) when that attempt already has
        one. Must run inside :meth:`writing`."""
        cur = self._execute(
            "INSERT INTO attempt_report (vm_job_id, attempt, worker, reported, report)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (vm_job_id, attempt) DO NOTHING",
            (row.vm_job_id, row.attempt, row.worker, row.reported, row.report),
        )
        return cur.rowcount == 1

    def report(self, vm_job_id: int, attempt: int) -> ReportRow | None:
        """The report of one attempt, None while there is none."""
        rows = self._query(
            "SELECT vm_job_id, attempt, worker, reported, report FROM attempt_report"
            " WHERE vm_job_id = ? AND attempt = ?",
            (vm_job_id, attempt),
        )
        return ReportRow(*rows[0]) if rows else None

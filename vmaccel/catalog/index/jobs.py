"""SQLite implementation of :class:`~vmaccel.catalog.index.protocols.JobIndex`: the ``job``,
``vm_job``, ``disk_task`` and ``job_log`` tables.

A job (one policy run) fans out into VM jobs, each into disk tasks per attempt. States:
``queued``, ``running``, ``succeeded``, ``warning``, ``failed``, ``interrupted``,
``cancelled``. Work is claimed with a conditional update (``... WHERE state = 'queued'``):
exactly one claimer sees one changed row, on SQLite (one writer) as on PostgreSQL (row lock),
so the daemon of today and the proxies of later take work from the same rows. ``owner`` is
the claimer (``host:pid``). Times are UNIX seconds; byte counts are bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vmaccel.catalog.index.connection import Connection
from vmaccel.vocabulary.errors import IndexCorrupt

QUEUED, RUNNING = "queued", "running"
SUCCEEDED, WARNING, FAILED = "succeeded", "warning", "failed"
INTERRUPTED, CANCELLED = "interrupted", "cancelled"
ACTIVE = (QUEUED, RUNNING)
LOG_LIMIT = 5000  # log lines kept per job: later lines are dropped (the job log is bounded)

_JOB_COLS = (
    "id, kind, policy, trigger, due, state, queued, started, finished, owner, cancel, summary"
)
_VM_COLS = (
    "id, job_id, vm, state, attempt, not_before, started, finished, owner, backup_id,"
    " bytes_read, bytes_stored, warnings, error"
)
_DISK_COLS = (
    "id, vm_job_id, attempt, disk, state, mode, reason, size, bytes_read, bytes_stored,"
    " duration, error, warnings"
)


@dataclass(frozen=True)
class JobRow:
    """One job. ``trigger``: schedule, catch-up or manual; ``due``: the schedule time it
    runs for (None when manual); ``cancel``: a stop was requested; ``summary``: its JSON."""

    id: int
    kind: str
    policy: str | None
    trigger: str
    due: float | None
    state: str
    queued: float
    started: float | None
    finished: float | None
    owner: str | None
    cancel: bool
    summary: Mapping[str, Any]


@dataclass(frozen=True)
class VmJobRow:
    """One VM of a job. ``attempt``: attempts started so far; ``not_before``: a queued retry
    waits until then."""

    id: int
    job_id: int
    vm: str
    state: str
    attempt: int
    not_before: float | None
    started: float | None
    finished: float | None
    owner: str | None
    backup_id: int | None
    bytes_read: int
    bytes_stored: int
    warnings: tuple[str, ...]
    error: str | None


@dataclass(frozen=True)
class DiskTaskRow:
    """One disk of one attempt of a VM job: ``mode`` full, incremental or rescan and its
    ``reason``; ``size``, ``bytes_read`` and ``bytes_stored`` in bytes; ``duration`` seconds.
    ``id`` and ``vm_job_id`` are 0 in a row not yet added."""

    id: int
    vm_job_id: int
    attempt: int
    disk: str
    state: str
    mode: str | None
    reason: str | None
    size: int
    bytes_read: int
    bytes_stored: int
    duration: float
    error: str | None
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class LogRow:
    id: int
    job_id: int
    vm_job_id: int | None
    at: float
    level: str
    message: str


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise IndexCorrupt(f"the {what} column of the catalog is not JSON: {exc}") from exc


def _job(r: Sequence[Any]) -> JobRow:
    return JobRow(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9],
        bool(r[10]), _json(r[11], "job summary"),
    )  # fmt: skip


def _vm(r: Sequence[Any]) -> VmJobRow:
    return VmJobRow(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11],
        tuple(_json(r[12], "vm_job warnings")), r[13],
    )  # fmt: skip


def _disk(r: Sequence[Any]) -> DiskTaskRow:
    return DiskTaskRow(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11],
        tuple(_json(r[12], "disk_task warnings")),
    )  # fmt: skip


class SqliteJobs(Connection):
    # -- jobs ----------------------------------------------------------------------------------

    def add_job(
        self, kind: str, policy: str | None, trigger: str, due: float | None, queued: float
    ) -> int:
        """A new job in state ``queued``; returns its id. Must run inside :meth:`writing`."""
        return self._insert(
            "INSERT INTO job (kind, policy, trigger, due, state, queued)"
            " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (kind, policy, trigger, due, QUEUED, queued),
        )

    def claim_job(self, job_id: int, owner: str, started: float) -> bool:
        """Make a queued job ``running`` for ``owner``; False when it was no longer queued.
        Must run inside :meth:`writing`."""
        cur = self._execute(
            "UPDATE job SET state = ?, owner = ?, started = ? WHERE id = ? AND state = ?",
            (RUNNING, owner, started, job_id, QUEUED),
        )
        return cur.rowcount == 1

    def finish_job(
        self, job_id: int, state: str, finished: float, summary: Mapping[str, Any]
    ) -> None:
        """Must run inside :meth:`writing`."""
        self._execute(
            "UPDATE job SET state = ?, finished = ?, summary = ? WHERE id = ?",
            (state, finished, json.dumps(summary, sort_keys=True), job_id),
        )

    def request_cancel(self, job_id: int, at: float) -> None:
        """Flag a stop: a queued job (and its queued VM jobs) becomes ``cancelled`` at once, a
        running one stops at its next check. Must run inside :meth:`writing`."""
        self._execute("UPDATE job SET cancel = 1 WHERE id = ?", (job_id,))
        self._execute(
            "UPDATE job SET state = ?, finished = ? WHERE id = ? AND state = ?",
            (CANCELLED, at, job_id, QUEUED),
        )
        self.end_vm_jobs(job_id, (QUEUED,), CANCELLED, at)

    def job(self, job_id: int) -> JobRow | None:
        rows = self._query(f"SELECT {_JOB_COLS} FROM job WHERE id = ?", (job_id,))  # noqa: S608 - constant columns
        return _job(rows[0]) if rows else None

    def jobs(
        self,
        policy: str | None = None,
        states: Sequence[str] = (),
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[JobRow]:
        """Jobs newest first, filtered by policy, states and ``id < before_id`` (paging)."""
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        if policy is not None:
            where.append("policy = ?")
            params.append(policy)
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            params.extend(states)
        if before_id is not None:
            where.append("id < ?")
            params.append(before_id)
        sql = f"SELECT {_JOB_COLS} FROM job WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?"  # noqa: S608 - constant columns, bound values
        return [_job(r) for r in self._query(sql, (*params, limit))]

    def last_due(self, policy: str) -> float | None:
        """The latest schedule time a job of ``policy`` was queued for (None: never)."""
        rows = self._query("SELECT MAX(due) FROM job WHERE policy = ?", (policy,))
        return None if rows[0][0] is None else float(rows[0][0])

    def last_success(self, policy: str) -> float | None:
        """When the latest job of ``policy`` that succeeded (maybe with warnings) ended."""
        rows = self._query(
            "SELECT MAX(finished) FROM job WHERE policy = ? AND state IN (?, ?)",
            (policy, SUCCEEDED, WARNING),
        )
        return None if rows[0][0] is None else float(rows[0][0])

    # -- VM jobs and disk tasks ----------------------------------------------------------------

    def add_vm_jobs(self, job_id: int, vms: Sequence[str]) -> None:
        """One queued VM job per name. Must run inside :meth:`writing`."""
        self._executemany(
            "INSERT INTO vm_job (job_id, vm, state) VALUES (?, ?, ?)",
            [(job_id, vm, QUEUED) for vm in vms],
        )

    def claim_vm_job(self, vm_job_id: int, owner: str, started: float) -> bool:
        """Start the next attempt of a queued VM job; False when it was no longer queued.
        Must run inside :meth:`writing`."""
        cur = self._execute(
            "UPDATE vm_job SET state = ?, attempt = attempt + 1, owner = ?, started = ?,"
            " finished = NULL, not_before = NULL WHERE id = ? AND state = ?",
            (RUNNING, owner, started, vm_job_id, QUEUED),
        )
        return cur.rowcount == 1

    def finish_vm_job(self, row: VmJobRow) -> None:
        """Store the outcome of an attempt (state, times, backup, bytes, warnings, error,
        ``not_before`` of a retry). Must run inside :meth:`writing`."""
        self._execute(
            "UPDATE vm_job SET state = ?, not_before = ?, finished = ?, backup_id = ?,"
            " bytes_read = ?, bytes_stored = ?, warnings = ?, error = ? WHERE id = ?",
            (
                row.state, row.not_before, row.finished, row.backup_id, row.bytes_read,
                row.bytes_stored, json.dumps(list(row.warnings)), row.error, row.id,
            ),
        )  # fmt: skip

    def end_vm_jobs(self, job_id: int, states: Sequence[str], state: str, at: float) -> int:
        """Move the VM jobs of ``job_id`` that are in ``states`` to ``state`` (finished
        ``at``); returns how many. Must run inside :meth:`writing`."""
        marks = ", ".join("?" * len(states))
        cur = self._execute(
            f"UPDATE vm_job SET state = ?, finished = ? WHERE job_id = ? AND state IN ({marks})",  # noqa: S608 - marks only
            (state, at, job_id, *states),
        )
        return cur.rowcount

    def vm_jobs(self, job_id: int) -> list[VmJobRow]:
        rows = self._query(f"SELECT {_VM_COLS} FROM vm_job WHERE job_id = ? ORDER BY id", (job_id,))  # noqa: S608 - constant columns
        return [_vm(r) for r in rows]

    def add_disk_tasks(self, tasks: Sequence[DiskTaskRow]) -> None:
        """Record finished disk tasks (their ids are assigned). Must run inside :meth:`writing`."""
        self._executemany(
            "INSERT INTO disk_task (vm_job_id, attempt, disk, state, mode, reason, size,"
            " bytes_read, bytes_stored, duration, error, warnings)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (t.vm_job_id, t.attempt, t.disk, t.state, t.mode, t.reason, t.size,
                 t.bytes_read, t.bytes_stored, t.duration, t.error, json.dumps(list(t.warnings)))
                for t in tasks
            ],
        )  # fmt: skip

    def disk_tasks(self, job_id: int) -> list[DiskTaskRow]:
        """Every disk task of every VM job of ``job_id``, by id."""
        rows = self._query(
            f"SELECT {', '.join('d.' + c.strip() for c in _DISK_COLS.split(','))}"  # noqa: S608 - constant columns
            " FROM disk_task d JOIN vm_job v ON v.id = d.vm_job_id WHERE v.job_id = ?"
            " ORDER BY d.id",
            (job_id,),
        )
        return [_disk(r) for r in rows]

    # -- the log -------------------------------------------------------------------------------

    def add_log(
        self, job_id: int, vm_job_id: int | None, at: float, level: str, message: str
    ) -> bool:
        """Append one line unless the job already has :data:`LOG_LIMIT`; True when stored.
        Must run inside :meth:`writing`."""
        cur = self._execute(
            "INSERT INTO job_log (job_id, vm_job_id, at, level, message)"
            " SELECT ?, CAST(? AS BIGINT), ?, ?, ?"  # typed: PostgreSQL cannot infer a NULL
            " WHERE (SELECT COUNT(*) FROM job_log WHERE job_id = ?) < ?",
            (job_id, vm_job_id, at, level, message, job_id, LOG_LIMIT),
        )
        return cur.rowcount == 1

    def job_log(self, job_id: int, after_id: int = 0, limit: int = 1000) -> list[LogRow]:
        """Lines of ``job_id`` with ``id > after_id``, oldest first (follow by passing the
        last id seen)."""
        rows = self._query(
            "SELECT id, job_id, vm_job_id, at, level, message FROM job_log"
            " WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?",
            (job_id, after_id, limit),
        )
        return [LogRow(*r) for r in rows]

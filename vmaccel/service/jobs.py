"""Job history: list, show, follow the log of and cancel jobs (policy runs, VM jobs, disks).

Records are frozen with ``to_dict`` (JSON-ready) and ``summary`` (human lines). The rows
live in the catalog index (:mod:`vmaccel.catalog.index.jobs`); the daemon's runner writes
them through :class:`JobBook`. Times are UNIX seconds, byte counts bytes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from vmaccel.catalog.index.jobs import (
    CANCELLED,
    FAILED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    WARNING,
    DiskTaskRow,
    JobRow,
    LogRow,
    VmJobRow,
)
from vmaccel.catalog.repository import Repository
from vmaccel.service.context import Context
from vmaccel.vocabulary.errors import NotFound, UsageError
from vmaccel.vocabulary.units import format_bytes, format_time

STATES = (QUEUED, RUNNING, SUCCEEDED, WARNING, FAILED, INTERRUPTED, CANCELLED)
FINAL = (SUCCEEDED, WARNING, FAILED, INTERRUPTED, CANCELLED)


def owner_id() -> str:
    """Who claims work in this process: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str | None) -> bool:
    """Whether the claimer ``owner`` (``host:pid``) still runs: a process on another host
    counts as alive (it may be a proxy; only its own host can tell)."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _not_zombie(int(pid))


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@contextlib.contextmanager
def catalog(ctx: Context) -> Iterator[Repository]:
    """The repository opened for reading, its index migrated first when it predates the
    policy and job tables (under the maintenance lock, as every migration)."""
    r = ctx.open()
    try:
        if r.index.pending_migrations():
            r.close()
            with ctx.open(write=True):
                pass  # opening for maintenance applies the pending migrations
            r = ctx.open()
        yield r
    finally:
        r.close()


@dataclass(frozen=True)
class DiskTaskRecord:
    disk: str
    attempt: int
    state: str
    mode: str | None
    reason: str | None
    size: int
    bytes_read: int
    bytes_stored: int
    duration: float
    error: str | None
    warnings: tuple[str, ...]

    @classmethod
    def of(cls, row: DiskTaskRow) -> DiskTaskRecord:
        return cls(
            row.disk, row.attempt, row.state, row.mode, row.reason, row.size, row.bytes_read,
            row.bytes_stored, row.duration, row.error, row.warnings,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VmJobRecord:
    """One VM of a job; ``outcome`` is the state in words ("succeeded after retry" when an
    attempt after the first succeeded)."""

    id: int
    job_id: int
    vm: str
    state: str
    attempt: int
    started: float | None
    finished: float | None
    backup_id: int | None
    bytes_read: int
    bytes_stored: int
    warnings: tuple[str, ...]
    error: str | None
    disks: tuple[DiskTaskRecord, ...] = ()

    @property
    def outcome(self) -> str:
        if self.state in (SUCCEEDED, WARNING) and self.attempt > 1:
            return f"{self.state} after retry"
        return self.state

    @classmethod
    def of(cls, row: VmJobRow, disks: tuple[DiskTaskRecord, ...] = ()) -> VmJobRecord:
        return cls(
            row.id, row.job_id, row.vm, row.state, row.attempt, row.started, row.finished,
            row.backup_id, row.bytes_read, row.bytes_stored, row.warnings, row.error, disks,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["outcome"] = self.outcome
        return out


@dataclass(frozen=True)
class JobRecord:
    id: int
    kind: str
    policy: str | None
    trigger: str
    state: str
    queued: float
    started: float | None
    finished: float | None
    owner: str | None
    cancel_requested: bool
    summary: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, row: JobRow) -> JobRecord:
        return cls(
            row.id, row.kind, row.policy, row.trigger, row.state, row.queued, row.started,
            row.finished, row.owner, row.cancel, dict(row.summary),
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        when = format_time(self.started or self.queued)
        return f"#{self.id} {self.policy or self.kind} {self.trigger} {when} {self.state}"


@dataclass(frozen=True)
class JobList:
    jobs: tuple[JobRecord, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"jobs": [j.to_dict() for j in self.jobs]}

    def summary(self) -> list[str]:
        return [j.line() for j in self.jobs] or ["no jobs"]


@dataclass(frozen=True)
class JobDetail:
    job: JobRecord
    vms: tuple[VmJobRecord, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**self.job.to_dict(), "vms": [v.to_dict() for v in self.vms]}

    def summary(self) -> list[str]:
        lines = [self.job.line()]
        for v in self.vms:
            tail = f": {v.error}" if v.error else ""
            lines.append(
                f"  {v.vm}: {v.outcome} (attempt {v.attempt}, backup {v.backup_id}, read "
                f"{format_bytes(v.bytes_read)}, stored {format_bytes(v.bytes_stored)}){tail}"
            )
            for d in v.disks:
                if d.attempt == v.attempt:
                    lines.append(f"    {d.disk}: {d.state} {d.mode} ({d.reason})")
            lines.extend(f"    warning: {w}" for w in v.warnings)
        return lines


@dataclass(frozen=True)
class LogLine:
    id: int
    job_id: int
    vm_job_id: int | None
    at: float
    level: str
    message: str

    @classmethod
    def of(cls, row: LogRow) -> LogLine:
        return cls(row.id, row.job_id, row.vm_job_id, row.at, row.level, row.message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        return f"{format_time(self.at)} {self.level:7} {self.message}"


def list_jobs(
    ctx: Context,
    policy: str | None = None,
    state: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> list[JobRecord]:
    """Jobs newest first; ``before_id`` pages (pass the smallest id of the last page)."""
    if state is not None and state not in STATES:
        raise UsageError(f"job state {state!r} is not one of {', '.join(STATES)}")
    if limit < 1:
        raise UsageError("limit must be at least 1")
    with catalog(ctx) as r:
        rows = r.index.jobs(policy, (state,) if state else (), limit, before_id)
    return [JobRecord.of(j) for j in rows]


def show_job(ctx: Context, job_id: int) -> JobDetail:
    with catalog(ctx) as r:
        row = _job(r, job_id)
        vms, disks = r.index.vm_jobs(job_id), r.index.disk_tasks(job_id)
    by_vm: dict[int, list[DiskTaskRecord]] = {}
    for d in disks:
        by_vm.setdefault(d.vm_job_id, []).append(DiskTaskRecord.of(d))
    records = tuple(VmJobRecord.of(v, tuple(by_vm.get(v.id, ()))) for v in vms)
    return JobDetail(JobRecord.of(row), records)


def job_log(ctx: Context, job_id: int, after_id: int = 0, limit: int = 1000) -> list[LogLine]:
    """Log lines of a job after ``after_id`` (follow: pass the last id seen), oldest first."""
    with catalog(ctx) as r:
        _job(r, job_id)
        return [LogLine.of(x) for x in r.index.job_log(job_id, after_id, limit)]


def cancel_job(ctx: Context, job_id: int) -> JobRecord:
    """Cancel a queued job at once, or ask a running one to stop: no new VM starts, VMs in
    flight stop at their next check (snapshots removed, nothing partial recorded)."""
    with catalog(ctx) as r:
        row = _job(r, job_id)
        if row.state in FINAL:
            raise UsageError(f"job {job_id} has already ended ({row.state})")
        with r.index.writing():
            r.index.request_cancel(job_id, time.time())
        return JobRecord.of(_job(r, job_id))


def _job(r: Repository, job_id: int) -> JobRow:
    row = r.index.job(job_id)
    if row is None:
        raise NotFound(f"no job {job_id}")
    return row

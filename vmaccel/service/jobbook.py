"""Writing the job rows of a run: queue, claim, record attempts, log, finish, and mark the
jobs of a dead owner interrupted. The daemon's runner (and ``policy run``) write through
:class:`JobBook`; everything else reads through :mod:`vmaccel.service.jobs`.

Every method is one transaction (``index.writing()``); the index may be shared by threads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from vmaccel.catalog.index.jobs import (
    ACTIVE,
    FAILED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    WARNING,
    DiskTaskRow,
    JobRow,
    VmJobRow,
)
from vmaccel.catalog.index.protocols import JobIndex
from vmaccel.plugin.engine.report import VmReport
from vmaccel.service.jobs import JobRecord
from vmaccel.vocabulary.errors import Interrupted

logger = logging.getLogger(__name__)
INTERRUPTED_EXIT = Interrupted.exit_code
_on_queued: list[Callable[[], None]] = []


def on_queued(listener: Callable[[], None]) -> Callable[[], None]:
    """Call ``listener`` (from the queuing thread; it must only set a flag) whenever a run is
    queued in this process, so the daemon starts API run-now requests at once. Returns the
    function that removes it."""
    _on_queued.append(listener)
    return lambda: _on_queued.remove(listener)


def queue_run(
    index: JobIndex, policy: str, trigger: str, due: float | None
) -> tuple[JobRecord, bool]:
    """Queue a run of ``policy`` unless one is queued or running: (the new job, True), or
    (the active one, False) — never two runs of one policy at once. One transaction, so two
    callers cannot both add."""
    with index.writing():
        active = index.jobs(policy, ACTIVE, 1)
        job_id = active[0].id if active else index.add_job("policy", policy, trigger, due,
                                                           time.time())  # fmt: skip
    row = index.job(job_id)
    assert row is not None  # noqa: S101 - just read or written
    if not active:
        for listener in list(_on_queued):
            listener()
    return JobRecord.of(row), not active


def vm_state(report: VmReport) -> str:
    """The state a finished attempt leaves: succeeded, warning, failed or interrupted."""
    if not report.ok:
        return INTERRUPTED if report.exit_code == INTERRUPTED_EXIT else FAILED
    warned = report.warnings or any(d.warnings for d in report.disks)
    return WARNING if warned else SUCCEEDED


def _disk_rows(vm_job: VmJobRow, report: VmReport) -> list[DiskTaskRow]:
    return [
        DiskTaskRow(
            0, vm_job.id, vm_job.attempt, d.disk, FAILED if d.error else SUCCEEDED, d.mode,
            d.reason, d.size, d.bytes_read, d.stored_bytes, d.duration, d.error, d.warnings,
        )
        for d in report.disks
    ]  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    """How a run ended: its state and the JSON summary stored with it."""

    state: str
    summary: Mapping[str, Any]


def run_outcome(vms: list[VmJobRow], notes: list[str]) -> Outcome:
    """A run's state from its VM jobs: interrupted if any VM was, else failed if any VM
    failed or was cancelled, else warning if any VM warned or succeeded only after a retry,
    else succeeded. A run that selected no VM succeeds (its notes say why)."""
    states = [v.state for v in vms]
    if INTERRUPTED in states:
        state = INTERRUPTED
    elif FAILED in states or "cancelled" in states:
        state = FAILED
    elif WARNING in states or any(v.attempt > 1 for v in vms):
        state = WARNING
    else:
        state = SUCCEEDED
    summary = {
        "vms": len(vms),
        "by_state": {s: states.count(s) for s in sorted(set(states))},
        "retried": sorted(v.vm for v in vms if v.attempt > 1),
        "failed": {v.vm: v.error for v in vms if v.state in (FAILED, INTERRUPTED)},
        "bytes_read": sum(v.bytes_read for v in vms),
        "bytes_stored": sum(v.bytes_stored for v in vms),
        "notes": notes,
    }
    return Outcome(state, summary)


class JobBook:
    """The job rows of runs owned by ``owner`` (``host:pid``)."""

    def __init__(self, index: JobIndex, owner: str) -> None:
        self.index, self.owner = index, owner

    def claim(self, job_id: int) -> bool:
        with self.index.writing():
            return self.index.claim_job(job_id, self.owner, time.time())

    def add_vms(self, job_id: int, names: list[str]) -> list[VmJobRow]:
        with self.index.writing():
            self.index.add_vm_jobs(job_id, names)
        return self.index.vm_jobs(job_id)

    def claim_vm(self, vm_job: VmJobRow) -> VmJobRow | None:
        """The VM job, running its next attempt; None when another claimer took it."""
        now = time.time()
        with self.index.writing():
            if not self.index.claim_vm_job(vm_job.id, self.owner, now):
                return None
        return replace(vm_job, state=RUNNING, attempt=vm_job.attempt + 1, started=now,
                       owner=self.owner, not_before=None)  # fmt: skip

    def record(self, vm_job: VmJobRow, report: VmReport, retry_at: float | None) -> VmJobRow:
        """Store an attempt's outcome and its disk tasks; a failed attempt with ``retry_at``
        is queued again for then (its error kept until a later attempt succeeds)."""
        state = vm_state(report)
        if state == FAILED and retry_at is not None:
            state = QUEUED
        warnings = (*report.warnings, *(w for d in report.disks for w in d.warnings))
        row = replace(
            vm_job, state=state, not_before=retry_at if state == QUEUED else None,
            finished=time.time(), backup_id=report.backup_id,
            bytes_read=vm_job.bytes_read + sum(d.bytes_read for d in report.disks),
            bytes_stored=vm_job.bytes_stored + sum(d.stored_bytes for d in report.disks),
            warnings=tuple(warnings), error=report.error if not report.ok else None,
        )  # fmt: skip
        if not report.ok and row.error is None:
            row = replace(row, error="; ".join(d.error for d in report.disks if d.error))
        with self.index.writing():
            self.index.finish_vm_job(row)
            self.index.add_disk_tasks(_disk_rows(vm_job, report))
        return row

    def end_vms(
        self, job_id: int, state: str, why: str, states: tuple[str, ...] = (QUEUED,)
    ) -> None:
        """Every VM job of ``job_id`` in ``states`` (by default: still queued) ends in
        ``state``, with the reason logged."""
        with self.index.writing():
            n = self.index.end_vm_jobs(job_id, states, state, time.time())
        if n:
            self.log(job_id, None, "warning", f"{n} VM(s) {state}: {why}")

    def log(self, job_id: int, vm_job_id: int | None, level: str, message: str) -> None:
        """One line in the job's log (and in the process log)."""
        logger.log(logging.WARNING if level != "info" else logging.INFO, "job %d: %s",
                   job_id, message)  # fmt: skip
        with self.index.writing():
            self.index.add_log(job_id, vm_job_id, time.time(), level, message)

    def cancel_requested(self, job_id: int) -> bool:
        row = self.index.job(job_id)
        return row is None or row.cancel

    def finish(self, job_id: int, notes: list[str], state: str | None = None) -> JobRow:
        """End the job with ``state``, by default the one its VM jobs give (see
        :func:`run_outcome`)."""
        outcome = run_outcome(self.index.vm_jobs(job_id), notes)
        with self.index.writing():
            self.index.finish_job(job_id, state or outcome.state, time.time(), outcome.summary)
        row = self.index.job(job_id)
        assert row is not None  # noqa: S101 - just written
        return row

    def interrupt_orphans(
        self, alive: Callable[[str | None], bool]
    ) -> list[tuple[JobRow, list[str]]]:
        """Mark running jobs whose owner is dead (a killed daemon) interrupted, with their
        running and queued VM jobs; returns each with the VMs that were running (their
        snapshots may be left over)."""
        found = []
        for job in self.index.jobs(None, (RUNNING,), 1000):
            if alive(job.owner):
                continue
            running = [v.vm for v in self.index.vm_jobs(job.id) if v.state == RUNNING]
            now = time.time()
            with self.index.writing():
                self.index.end_vm_jobs(job.id, (RUNNING, QUEUED), INTERRUPTED, now)
                self.index.finish_job(job.id, INTERRUPTED, now, {"interrupted_by": "owner died",
                                                                 "owner": job.owner})  # fmt: skip
                self.index.add_log(job.id, None, now, "error",
                                   f"interrupted: its owner {job.owner} died")  # fmt: skip
            found.append((job, running))
        return found

"""One queued VM job as a backup proxy (``vmaccel worker``) runs it, and the takeover of a
job whose proxy died.

:func:`run_task` backs the VM up exactly as the daemon's own runner would (the policy's
session: its vCenter, transport, quiesce, exclusions, the global limits — on a PostgreSQL
catalog those are slots every proxy shares, see :mod:`vmaccel.catalog.index.pgslots`), then
stores the attempt's report in the catalog for the run to record. Every outcome is reported,
a failure included: only a killed proxy leaves an attempt without a report, and that is what
the takeover (:func:`clear_stalled`) is for.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from vmaccel.catalog.index.reports import ReportRow
from vmaccel.plugin.engine.report import VmReport
from vmaccel.service.cancel import Cancel
from vmaccel.service.context import Context
from vmaccel.service.jobbook import JobBook
from vmaccel.service.jobs import catalog
from vmaccel.service.policies import get_policy
from vmaccel.service.policyrun import Limits, PolicySession
from vmaccel.service.vmqueue import VmTask
from vmaccel.vocabulary.errors import Interrupted, RepositoryLocked, VmaccelError

logger = logging.getLogger(__name__)
ABORT_POLL = 0.5  # seconds between checks of the queue's abort request


def run_task(
    ctx: Context, task: VmTask, worker: str, limits: Limits, should_abort: Callable[[], bool]
) -> VmReport:
    """Back up the VM of ``task`` as proxy ``worker`` and store the attempt's report (the
    first report of an attempt wins); returns the report. ``should_abort`` is polled: once
    it answers True the backup stops at its next progress step and removes its snapshot."""
    cancel, done = Cancel(), threading.Event()

    def watch() -> None:
        while not done.wait(ABORT_POLL):
            if should_abort():
                cancel.request("the run aborted this VM")
                return

    watcher = threading.Thread(target=watch, name="vmaccel-abort-watch", daemon=True)
    watcher.start()
    try:
        report = _back_up(ctx, task, worker, limits, cancel)
    finally:
        done.set()
        watcher.join()
    _store(ctx, task, worker, report)
    return report


def _failed(task: VmTask, exc: VmaccelError) -> VmReport:
    return VmReport(task.vm, None, (), 0.0, error=str(exc), exit_code=exc.exit_code)


def _back_up(ctx: Context, task: VmTask, worker: str, limits: Limits, cancel: Cancel) -> VmReport:
    try:
        policy = get_policy(ctx, task.policy).policy
        with PolicySession(ctx, policy, cancel, limits) as session:
            assert session.repo is not None  # noqa: S101 - inside with
            book = JobBook(session.repo.index, worker)
            if book.cancel_requested(task.job):
                return _failed(task, Interrupted("the run was cancelled before the VM started"))
            book.log(
                task.job, task.vm_job, "info", f"{task.vm}: attempt {task.attempt} on {worker}"
            )
            return session.back_up(session.find(task.moref), task.rescan)
    except VmaccelError as exc:
        return _failed(task, exc)
    except OSError as exc:
        return VmReport(task.vm, None, (), 0.0, error=f"unexpected I/O error: {exc}")


def _store(ctx: Context, task: VmTask, worker: str, report: VmReport) -> None:
    row = ReportRow(task.vm_job, task.attempt, worker, time.time(), report.to_json())
    with catalog(ctx) as r, r.index.writing():
        if not r.index.add_report(row):
            logger.warning("%s: attempt %d was already reported", task.vm, task.attempt)


def clear_stalled(ctx: Context, task: VmTask, worker: str) -> list[str] | None:
    """Before a stalled job is handed to another proxy: remove the VM's leftover vmaccel
    snapshots (the dead proxy's). Returns what was removed, or None when the VM's backup lock
    is held (someone backs it up right now: leave the job for a later round)."""
    policy = get_policy(ctx, task.policy).policy
    with PolicySession(replace(ctx, lock_wait=0.0), policy, Cancel(), lease=False) as session:
        assert session.repo is not None  # noqa: S101 - inside with
        try:
            with session.repo.vm_lock(task.vm):
                removed = session.remove_leftovers([task.vm])
        except RepositoryLocked:
            return None
        note = f"{task.vm}: its proxy stopped answering; {worker} hands attempt" \
               f" {task.attempt} to the next proxy"  # fmt: skip
        if removed:
            note += f" (removed {', '.join(removed)})"
        JobBook(session.repo.index, worker).log(task.job, task.vm_job, "warning", note)
        return removed

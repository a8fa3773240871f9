"""One policy run, from its claimed job row to its end: select the VMs live, back them up in
parallel under the global limits, inside the window, retry the failed ones, then prune.

Rules (the README's "Policies" section states them for users):

- a VM starts only inside the policy's window; a VM in flight when the window closes
  finishes (running disks are never cut); VMs not started by then fail ("window closed");
- a failed VM is retried ``retries`` times, ``retry_delay`` seconds apart, each retry only
  inside the window; one that succeeds on a retry ends "succeeded after retry";
- a stop (daemon shutdown) starts no new VM and lets VMs in flight finish until
  ``Runner.abort`` (the shutdown timeout) cancels them: their disks stop at the next
  progress step, their snapshots are removed, and they end ``interrupted``;
- a cancel request on the job (``jobs cancel``) stops at once: in-flight VMs are aborted the
  same way and the job ends ``cancelled``;
- after the run, prune applies the policy's retention to the policy's VMs only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from vmaccel.catalog.index.jobs import (
    CANCELLED,
    FAILED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    JobRow,
    VmJobRow,
)
from vmaccel.plugin.engine.report import VmReport
from vmaccel.service.cancel import Cancel
from vmaccel.service.context import Context
from vmaccel.service.jobbook import JobBook
from vmaccel.service.jobs import catalog
from vmaccel.service.policyrun import Limits, PolicySession, prune_policy_vms, verify_after_run
from vmaccel.service.policyspec import Policy
from vmaccel.service.schedule import window_open
from vmaccel.vocabulary.errors import Interrupted, VmaccelError

if TYPE_CHECKING:  # (the queue, procrastinate, loads only for a run that uses it)
    from vmaccel.plugin.vcenter.models import VmRef
    from vmaccel.service.remotepool import RemotePool

logger = logging.getLogger(__name__)
INTERRUPTED_CODE = Interrupted.exit_code
POLL = 0.5  # seconds between checks of the window, retries, cancel and stop while VMs run

Finished = Callable[[Policy, JobRow, list[VmJobRow]], None]
"""Called with the ended job and its VM jobs (the daemon sends the notification)."""


@dataclass
class _Run:
    policy: Policy
    job_id: int
    queue: list[VmJobRow]
    running: dict[Future[VmReport], VmJobRow]
    pool: _Pool


def _back_up(session: PolicySession, vm: VmRef, rescan: bool) -> VmReport:
    """One VM; an OS error the engine did not foresee fails the VM, not the run."""
    try:
        return session.back_up(vm, rescan)
    except OSError as exc:
        return VmReport(vm.name, None, (), 0.0, error=f"unexpected I/O error: {exc}")


class _Pool(AbstractContextManager["_Pool"], Protocol):
    def submit(self, row: VmJobRow, vm: VmRef, rescan: bool) -> Future[VmReport]: ...
    def drop_unstarted(self, why: str, exit_code: int) -> None: ...


class _Threads(AbstractContextManager["_Threads"]):
    """The run's VMs backed up by threads of this process."""

    def __init__(self, session: PolicySession, parallel: int, name: str) -> None:
        self.session, self.pool = session, ThreadPoolExecutor(parallel, name)

    def submit(self, row: VmJobRow, vm: VmRef, rescan: bool) -> Future[VmReport]:
        return self.pool.submit(_back_up, self.session, vm, rescan)

    def drop_unstarted(self, why: str, exit_code: int) -> None:
        pass  # every VM submitted here has a thread: none waits

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True)


class _Queue(AbstractContextManager["_Queue"]):
    """The run's VMs queued for backup proxies (one queue job per attempt)."""

    def __init__(self, remote: RemotePool, policy: Policy) -> None:
        self.remote, self.policy = remote, policy

    def __enter__(self) -> _Queue:
        self.remote.__enter__()
        return self

    def submit(self, row: VmJobRow, vm: VmRef, rescan: bool) -> Future[VmReport]:
        from vmaccel.service.vmqueue import VmTask

        datastore = vm.disks[0].datastore if vm.disks else ""
        task = VmTask(row.job_id, row.id, row.attempt, self.policy.name, self.policy.vcenter,
                      vm.name, vm.moref, datastore, rescan)  # fmt: skip
        return self.remote.submit(task)

    def drop_unstarted(self, why: str, exit_code: int) -> None:
        self.remote.drop_unstarted(why, exit_code)

    def __exit__(self, *exc: object) -> None:
        self.remote.__exit__(None, None, None)


class Runner:
    """Runs claimed policy jobs; one :class:`Runner` per worker process of the daemon
    (:mod:`vmaccel.daemon.worker`) or per ``policy run``. ``stopping`` is the stop flag (no
    new VM starts once set)."""

    def __init__(
        self,
        ctx: Context,
        owner: str,
        stopping: threading.Event,
        limits: Limits | None = None,
        on_finished: Finished = lambda p, j, v: None,
        clock: Callable[[], float] = time.time,
        queue: str | None = None,
    ) -> None:
        """``queue``: the catalog database whose VM job queue takes the VMs (backup proxies
        run them, :mod:`vmaccel.service.remotepool`); None: this process backs them up."""
        self.ctx, self.owner, self.stopping = ctx, owner, stopping
        self.queue = queue
        self.limits = limits or Limits()
        self.on_finished, self.clock = on_finished, clock
        self._cancels: set[Cancel] = set()
        self._lock = threading.Lock()

    def abort(self, reason: str) -> None:
        """Stop every VM in flight now (their disks stop at the next progress step)."""
        with self._lock:
            for c in self._cancels:
                c.request(reason)

    def run(self, policy: Policy, job_id: int) -> JobRow | None:
        """Claim and run job ``job_id`` of ``policy``; None when someone else claimed it."""
        with catalog(self.ctx) as r:
            return self._claimed(policy, job_id, JobBook(r.index, self.owner))

    def _claimed(self, policy: Policy, job_id: int, book: JobBook) -> JobRow | None:
        if not book.claim(job_id):
            return None
        cancel = Cancel()
        with self._lock:
            self._cancels.add(cancel)
        notes: list[str] = []
        failed = False
        try:
            self._run(policy, job_id, book, cancel, notes)
        except VmaccelError as exc:  # before or between VMs: vCenter, the repository, ...
            failed = True
            book.log(job_id, None, "error", f"the run failed: {exc}")
            notes.append(str(exc))
            book.end_vms(job_id, FAILED, str(exc), (QUEUED, RUNNING))
        except Exception:
            # A bug must not leave the job "running" (its policy would never run again).
            book.end_vms(job_id, FAILED, "internal error (see the daemon's log)", (QUEUED, RUNNING))
            book.finish(job_id, ["internal error (see the daemon's log)"], FAILED)
            raise
        finally:
            with self._lock:
                self._cancels.discard(cancel)
        return self._finish(policy, job_id, book, cancel, notes, FAILED if failed else None)

    def _run(
        self, policy: Policy, job_id: int, book: JobBook, cancel: Cancel, notes: list[str]
    ) -> None:
        with PolicySession(self.ctx, policy, cancel, self.limits) as session:
            vms, found = session.select()
            notes += found
            for line in found:
                book.log(job_id, None, "info", line)
            by_name = {vm.name: vm for vm in vms}
            rows = book.add_vms(job_id, sorted(by_name))
            book.log(job_id, None, "info", f"{len(rows)} VM(s) selected")
            with self._pool(policy, session, cancel) as pool:
                run = _Run(policy, job_id, list(rows), {}, pool)
                rescan = self._rescans(session, policy, list(by_name))
                while run.queue or run.running:
                    self._check(run, book, cancel)
                    self._start(run, book, by_name, rescan)
                    self._collect(run, book)

    def _pool(self, policy: Policy, session: PolicySession, cancel: Cancel) -> _Pool:
        """Where the run's VMs are backed up: threads of this process, or the queue."""
        if self.queue is None:
            return _Threads(session, policy.parallel, f"vmaccel-{policy.name}")
        from vmaccel.service.remotepool import RemotePool

        assert session.repo is not None  # noqa: S101 - open inside the session
        return _Queue(RemotePool(session.repo.index, self.queue, cancel), policy)

    def _rescans(self, session: PolicySession, policy: Policy, names: list[str]) -> set[str]:
        from vmaccel.service.policyplan import rescan_due

        assert session.repo is not None  # noqa: S101 - open inside the session
        now = self.clock()
        return {n for n in names if rescan_due(session.repo, n, policy.rescan_days, now)}

    def _check(self, run: _Run, book: JobBook, cancel: Cancel) -> None:
        """Cancel, stop and window: VMs that may no longer start leave the queue."""
        if book.cancel_requested(run.job_id):
            cancel.request("the job was cancelled")
            self._drop(run, book, CANCELLED, "the job was cancelled")
        elif self.stopping.is_set():
            self._drop(run, book, INTERRUPTED, "the daemon is stopping")
            run.pool.drop_unstarted("the daemon stopped before a proxy took it", INTERRUPTED_CODE)
        elif not window_open(run.policy.window, run.policy.timezone, self.clock()):
            self._drop(run, book, FAILED, "the backup window closed before it could start")
            run.pool.drop_unstarted("the backup window closed before a proxy took it", 1)

    def _drop(self, run: _Run, book: JobBook, state: str, why: str) -> None:
        if run.queue:
            run.queue.clear()
            book.end_vms(run.job_id, state, why)

    def _start(
        self,
        run: _Run,
        book: JobBook,
        by_name: dict[str, VmRef],
        rescan: set[str],
    ) -> None:
        now = self.clock()
        for row in sorted(run.queue, key=lambda r: r.not_before or 0):
            if len(run.running) >= run.policy.parallel:
                return
            if (row.not_before or 0) > now:
                continue
            run.queue.remove(row)
            claimed = book.claim_vm(row)
            if claimed is None:
                continue
            what = "retry " if claimed.attempt > 1 else ""
            book.log(run.job_id, row.id, "info", f"{row.vm}: {what}attempt {claimed.attempt}")
            future = run.pool.submit(claimed, by_name[row.vm], row.vm in rescan)
            run.running[future] = claimed

    def _collect(self, run: _Run, book: JobBook) -> None:
        if not run.running:
            if run.queue:
                time.sleep(POLL)  # waiting for a retry's time
            return
        done, _ = wait(list(run.running), timeout=POLL, return_when=FIRST_COMPLETED)
        for future in done:
            row = run.running.pop(future)
            report = future.result()
            retry_at = self._retry_at(run.policy, row, report)
            ended = book.record(row, report, retry_at)
            self._log_attempt(book, run.job_id, ended, report, retry_at)
            if ended.state == QUEUED:
                run.queue.append(ended)

    def _retry_at(self, policy: Policy, row: VmJobRow, report: VmReport) -> float | None:
        """When to retry a failed attempt: never after the last one, after a stop or a
        cancel, or when the retry would fall outside the window."""
        if report.ok or row.attempt > policy.retries or self.stopping.is_set():
            return None
        if report.exit_code == Interrupted.exit_code:
            return None
        at = self.clock() + policy.retry_delay
        return at if window_open(policy.window, policy.timezone, at) else None

    def _log_attempt(
        self, book: JobBook, job_id: int, row: VmJobRow, report: VmReport, retry: float | None
    ) -> None:
        if report.ok:
            book.log(job_id, row.id, "info", f"{row.vm}: {row.state} (backup {row.backup_id})")
            return
        then = f"; retry in {retry - self.clock():.0f} s" if retry is not None else ""
        book.log(job_id, row.id, "error", f"{row.vm}: attempt {row.attempt} failed: "
                 f"{report.error}{then}")  # fmt: skip

    def _finish(
        self,
        policy: Policy,
        job_id: int,
        book: JobBook,
        cancel: Cancel,
        notes: list[str],
        state: str | None,
    ) -> JobRow:
        """End the job: maintenance after a run that made backups, the state (``state``,
        else cancelled when asked, else what its VMs give), the notification."""
        vms = book.index.vm_jobs(job_id)
        if any(v.backup_id is not None for v in vms) and not cancel.requested:
            notes += self._maintain(policy, job_id, book, [v.vm for v in vms])
        if book.cancel_requested(job_id):
            state = CANCELLED
        job = book.finish(job_id, notes, state)
        book.log(job_id, None, "info", f"run ended: {job.state}")
        try:
            self.on_finished(policy, job, book.index.vm_jobs(job_id))
        except VmaccelError as exc:  # a notification never fails a run
            logger.warning("notifying the end of job %d failed: %s", job_id, exc)
        return job

    def _maintain(self, policy: Policy, job_id: int, book: JobBook, vms: list[str]) -> list[str]:
        """Prune the policy's VMs, then verify as the policy asks; problems become notes."""
        notes = []
        try:
            report = prune_policy_vms(self.ctx, policy.retention_counts(), vms)
            if report is not None:
                book.log(job_id, None, "info", f"prune: {report.summary()[-1]}")
            checked = verify_after_run(self.ctx, policy.verification)
            if checked is not None and not checked.ok:
                notes.append("verification after the run found damage: run `vmaccel verify`")
                book.log(job_id, None, "error", notes[-1])
        except VmaccelError as exc:
            notes.append(f"maintenance after the run failed: {exc}")
            book.log(job_id, None, "warning", notes[-1])
        return notes


"""The run's side of the VM job queue: each queued attempt as a :class:`~concurrent.futures.Future`
of its :class:`~vmaccel.plugin.engine.report.VmReport`, so a policy run waits for VMs backed
up by proxies as it waits for its own threads.

:meth:`RemotePool.submit` defers the attempt (:mod:`.vmqueue`); one poller thread then reads,
every ``poll`` seconds, the attempt's report (``attempt_report``, written by the proxy) and the
queue job's state. A report resolves the future with it. A queue job that ended without one
resolves it with a failure: cancelled or aborted before the proxy reported (interrupted), or
failed (the proxy's task crashed: its log says why). Once the run's :class:`Cancel` is
requested every queue job still open is aborted: proxies stop those VMs at their next
progress step and remove their snapshots.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from types import TracebackType

from vmaccel.catalog.index.protocols import JobIndex
from vmaccel.plugin.engine.report import VmReport
from vmaccel.service import vmqueue
from vmaccel.service.cancel import Cancel
from vmaccel.service.vmqueue import VmTask
from vmaccel.vocabulary.errors import Interrupted, VmaccelError

logger = logging.getLogger(__name__)
UNCLAIMED = 300.0  # seconds a queued VM may wait for a proxy before the log says so


class RemotePool:
    """Queued attempts of one run on the catalog database ``url`` (see the module docstring).
    A context manager: leaving it aborts what is still open and stops the poller."""

    def __init__(self, index: JobIndex, url: str, cancel: Cancel, poll: float = 0.5) -> None:
        self.index, self.cancel, self.poll = index, cancel, poll
        vmqueue.ensure_schema(url)
        self.app = vmqueue.make_app(url)
        self._pending: dict[int, tuple[VmTask, Future[VmReport]]] = {}
        self._queued_at: dict[int, float] = {}  # unclaimed jobs: when they were queued
        self._dropped: dict[int, tuple[str, int]] = {}  # cancelled unclaimed: why, exit code
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._aborted = False
        self._thread = threading.Thread(target=self._run, name="vmaccel-remote", daemon=True)

    def __enter__(self) -> RemotePool:
        self.app.open()
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed.set()
        self._thread.join()
        with self._lock:
            open_jobs = list(self._pending)
        for queue_job in open_jobs:
            vmqueue.abort(self.app, queue_job)
        self.app.close()

    def submit(self, task: VmTask) -> Future[VmReport]:
        """Queue one attempt; the future resolves with its report."""
        future: Future[VmReport] = Future()
        future.set_running_or_notify_cancel()
        queue_job = vmqueue.defer(self.app, task)
        with self._lock:
            self._pending[queue_job] = (task, future)
            self._queued_at[queue_job] = time.monotonic()
        logger.info("%s: attempt %d queued (queue job %d, %s)", task.vm, task.attempt,
                    queue_job, task.queue)  # fmt: skip
        return future

    def drop_unstarted(self, why: str, exit_code: int) -> None:
        """Cancel every queued attempt no proxy has claimed yet; each ends with error ``why``
        and ``exit_code`` (the window closed: failed; a stop: interrupted). Claimed ones go
        on."""
        with self._lock:
            open_jobs = list(self._pending)
        for queue_job in open_jobs:
            if queue_job not in self._dropped and vmqueue.cancel_unstarted(self.app, queue_job):
                self._dropped[queue_job] = (why, exit_code)

    def _run(self) -> None:
        while not self._closed.wait(self.poll):
            try:
                self._check_all()
            except VmaccelError as exc:  # the catalog database is away: try again next round
                logger.warning("checking queued VMs failed: %s", exc)

    def _check_all(self) -> None:
        if self.cancel.requested and not self._aborted:
            self._aborted = True
            with self._lock:
                open_jobs = list(self._pending)
            for queue_job in open_jobs:
                vmqueue.abort(self.app, queue_job)
        with self._lock:
            pending = list(self._pending.items())
        for queue_job, (task, future) in pending:
            report, state = self._outcome(queue_job, task)
            self._say_if_unclaimed(queue_job, task, state)
            if report is not None:
                with self._lock:
                    del self._pending[queue_job]
                future.set_result(report)

    def _say_if_unclaimed(self, queue_job: int, task: VmTask, state: str) -> None:
        """Log once that a VM waits for a proxy longer than :data:`UNCLAIMED` seconds."""
        if state != vmqueue.TODO:
            self._queued_at.pop(queue_job, None)
            return
        since = self._queued_at.get(queue_job)
        if since is not None and time.monotonic() - since > UNCLAIMED:
            del self._queued_at[queue_job]  # said once
            logger.warning(
                "%s: no proxy has claimed it for %.0f s: is a `vmaccel worker` running for"
                " queue %s?", task.vm, UNCLAIMED, task.queue,
            )  # fmt: skip

    def _outcome(self, queue_job: int, task: VmTask) -> tuple[VmReport | None, str]:
        """(the attempt's report once there is one, or once its queue job ended without one,
        else None; the queue job's state)."""
        state = vmqueue.status(self.app, queue_job)  # read first: a report may follow it
        row = self.index.report(task.vm_job, task.attempt)
        if row is not None:
            try:
                return VmReport.from_json(row.report), state
            except ValueError as exc:
                return VmReport(task.vm, None, (), 0.0, error=f"{row.worker} sent {exc}"), state
        if state not in vmqueue.ENDED:
            return None, state
        return self._unreported(queue_job, task, state), state

    def _unreported(self, queue_job: int, task: VmTask, state: str) -> VmReport:
        """The outcome of a queue job that ended without a report."""
        if queue_job in self._dropped:
            why, code = self._dropped[queue_job]
            return VmReport(task.vm, None, (), 0.0, error=why, exit_code=code)
        if state == vmqueue.FAILED:
            why = "the proxy's task failed without a report (see the worker's log)"
            return VmReport(task.vm, None, (), 0.0, error=why, exit_code=1)
        if state == vmqueue.SUCCEEDED:  # reported and then lost? never recorded: a failure
            return VmReport(task.vm, None, (), 0.0, error="the proxy left no report", exit_code=1)
        why = f"{self.cancel.reason if self.cancel.requested else 'the queue job was ' + state}"
        return VmReport(task.vm, None, (), 0.0, error=why, exit_code=Interrupted.exit_code)

"""The daemon of one repository: start-up, the scheduler loop, shutdown.

Start-up: take the daemon lock (a second daemon on the repository is refused), apply pending
catalog migrations, mark the jobs killed processes left ``running`` as ``interrupted`` and
remove the backup snapshots they left on their VMs (in a worker process:
:mod:`vmaccel.daemon.recovery`), open the notification outbox.

Runs: each policy run executes in a worker process (:mod:`vmaccel.daemon.worker`); the
daemon keeps only the scheduler, the REST API and the notifications, so its memory does not
grow with runs. A run queued in this process (the API's run-now) wakes the loop at once, one
queued by another process (``policy run --queue``) within ``QUEUE_POLL`` seconds. When a
worker has exited the daemon sends the run's notification; a worker that died mid-run (kill
-9) leaves its job to the recovery, which the daemon starts at once.

Shutdown (:meth:`Daemon.stop`, SIGTERM in the CLI): the workers get SIGTERM (no new VM
starts); VMs in flight may finish for ``stop_timeout`` seconds, then the workers get SIGUSR1
(VMs in flight are aborted: their disks stop at the next progress step, their snapshots are
removed, they end ``interrupted``); runs end with the state their VMs give; the daemon waits
for its workers (killing those still there after ``ABORT_GRACE`` seconds and recovering their
jobs), then releases the lock.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from vmaccel.catalog.index.jobs import QUEUED
from vmaccel.daemon.checks import Checks, notify_run
from vmaccel.daemon.lock import DaemonLock
from vmaccel.daemon.notify import Notifier, open_notifier
from vmaccel.daemon.scheduler import Scheduler, ServeOptions
from vmaccel.daemon.worker import CLAIMED_ELSEWHERE
from vmaccel.daemon.workers import Ended, Workers
from vmaccel.service.context import Context
from vmaccel.service.jobbook import on_queued
from vmaccel.service.jobs import FINAL, catalog, owner_id
from vmaccel.vocabulary.errors import VmaccelError

logger = logging.getLogger(__name__)
ABORT_GRACE = 120.0  # seconds aborted VMs get to unwind (remove their snapshots) at a stop
QUEUE_POLL = 1.0  # seconds between reads of the queued jobs (runs queued by other processes)
RECOVERY_TIMEOUT = 600.0  # seconds the recovery of killed runs may take


def state_dir(ctx: Context) -> Path:
    """The daemon's own files for this repository (the notification outbox), under the
    config directory: ``daemon/<sha256 of the repository path, 16 hex digits>``."""
    digest = hashlib.sha256(str(ctx.require_repo()).encode()).hexdigest()[:16]
    return ctx.config_dir / "daemon" / digest


class Daemon:
    """``vmaccel serve`` without the REST API (the application runs that beside it).
    ``log_json``: the workers log JSON lines too."""

    def __init__(self, ctx: Context, options: ServeOptions, log_json: bool = False) -> None:
        self.ctx, self.options = ctx, options
        self.owner = owner_id()
        self.stopping = threading.Event()
        self.wake = threading.Event()  # set: the loop should look at the queue (or stop)
        self.workers = Workers(ctx, options.limits, log_json, options.local_backups)
        self._aborted = False
        self.held: set[int] = set()  # queued jobs whose worker failed: retried at the next tick

    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler: it only sets events)."""
        self.stopping.set()
        self.wake.set()

    def abort(self, reason: str = "the daemon was stopped twice") -> None:
        """Abort VMs in flight now (a second stop signal): the workers get SIGUSR1."""
        logger.warning("aborting the VMs in flight: %s", reason)
        self._aborted = True
        self.stop()
        self.workers.signal_all(signal.SIGUSR1)

    def run(self, on_locked: Callable[[], None] = lambda: None) -> None:
        """Serve until :meth:`stop`; raises :class:`RepositoryLocked` when another daemon
        serves the repository. ``on_locked`` is called once the daemon holds the repository
        and has recovered from a crash (the application starts the REST API there)."""
        with DaemonLock(self.ctx.require_repo(), self.owner):
            with catalog(self.ctx):  # applies pending migrations before a worker opens it
                pass
            self.workers.recover(RECOVERY_TIMEOUT)
            notifier = open_notifier(self.ctx.config_dir, state_dir(self.ctx), self.ctx.env)
            remove = on_queued(self.wake.set)
            try:
                with notifier:
                    on_locked()
                    self._loop(notifier)
            finally:
                remove()

    def _loop(self, notifier: Notifier) -> None:
        scheduler = Scheduler(self.ctx, self.options, self.workers, self.stopping, self.held)
        checks = Checks(self.ctx, notifier, self.options.checks_every)
        logger.info("serving %s (tick %s s)", self.ctx.repo, self.options.tick)
        next_tick = 0.0
        while not self.stopping.is_set():
            try:
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.options.tick
                    checks.maybe_run(scheduler.tick())
                else:
                    scheduler.start_queued()
            except VmaccelError as exc:  # the catalog busy, a vCenter down: next pass
                logger.error("scheduler pass failed: %s", exc)
            self._ended(notifier, self.workers.reap())
            wait = min(QUEUE_POLL, max(0.0, next_tick - time.monotonic()))
            self.wake.wait(wait)
            self.wake.clear()
        self._shut_down(notifier)

    def _ended(self, notifier: Notifier, ended: list[Ended]) -> None:
        """Notify the runs whose workers exited; recover the jobs of workers that died."""
        died = False
        for end in ended:
            policy, job_id = end.worker.policy, end.worker.job_id
            if policy is None or end.status == CLAIMED_ELSEWHERE:
                continue
            try:
                with catalog(self.ctx) as r:
                    job, vms = r.index.job(job_id), r.index.vm_jobs(job_id)
                if job is not None and job.state == QUEUED:  # it failed before its claim
                    self.held.add(job_id)
                elif job is None or job.state not in FINAL:
                    logger.error("policy %s: the worker of run %d died (status %d)",
                                 policy.name, job_id, end.status)  # fmt: skip
                    died = True
                else:
                    logger.info("policy %s: run %d ended %s", policy.name, job_id, job.state)
                    notify_run(notifier, policy, job, vms)
            except VmaccelError as exc:  # a notification never fails the daemon
                logger.warning("notifying the end of job %d failed: %s", job_id, exc)
        if died:
            self.workers.recover(RECOVERY_TIMEOUT)

    def _shut_down(self, notifier: Notifier) -> None:
        workers = self.workers
        if workers.running:
            logger.info("stopping: no new VM starts; VMs in flight get %s s to finish",
                        self.options.stop_timeout)  # fmt: skip
            workers.signal_all(signal.SIGTERM)
        ended = workers.wait(0.0 if self._aborted else self.options.stop_timeout)
        if workers.running:
            logger.warning("stop timeout: aborting the VMs in flight")
            workers.signal_all(signal.SIGUSR1)
            ended += workers.wait(ABORT_GRACE)
        if workers.running:
            logger.error("runs still going after the abort: %s; killing them",
                         ", ".join(workers.running))  # fmt: skip
            ended += workers.kill_all()
        self._ended(notifier, ended)
        logger.info("stopped")

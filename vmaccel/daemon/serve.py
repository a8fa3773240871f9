"""The daemon of one repository: start-up, the scheduler loop, shutdown.

Start-up: take the daemon lock (a second daemon on the repository is refused), apply pending
catalog migrations, mark the jobs a killed daemon left ``running`` as ``interrupted`` and
remove the backup snapshots it left on their VMs, open the notification outbox.

Shutdown (:meth:`Daemon.stop`, SIGTERM in the CLI): no new VM starts; VMs in flight may
finish for ``stop_timeout`` seconds, then they are aborted (their disks stop at the next
progress step, their snapshots are removed, they end ``interrupted``); runs end with the
state their VMs give; the lock is released.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from vmaccel.daemon.checks import Checks, notify_run
from vmaccel.daemon.lock import DaemonLock
from vmaccel.daemon.notify import Notifier, open_notifier
from vmaccel.daemon.runner import Runner
from vmaccel.daemon.scheduler import Scheduler, ServeOptions
from vmaccel.service.cancel import Cancel
from vmaccel.service.context import Context
from vmaccel.service.jobbook import JobBook
from vmaccel.service.jobs import catalog, owner_alive, owner_id
from vmaccel.service.policies import get_policy
from vmaccel.service.policyrun import PolicySession
from vmaccel.vocabulary.errors import VmaccelError

logger = logging.getLogger(__name__)
ABORT_GRACE = 120.0  # seconds aborted VMs get to unwind (remove their snapshots) at a stop


def state_dir(ctx: Context) -> Path:
    """The daemon's own files for this repository (the notification outbox), under the
    config directory: ``daemon/<sha256 of the repository path, 16 hex digits>``."""
    digest = hashlib.sha256(str(ctx.require_repo()).encode()).hexdigest()[:16]
    return ctx.config_dir / "daemon" / digest


def recover(ctx: Context, owner: str) -> list[str]:
    """Mark the jobs of dead owners interrupted and remove the snapshots their running VMs
    left (best effort: a VM's next backup removes leftovers too). Returns what was done."""
    with catalog(ctx) as r:
        book = JobBook(r.index, owner)
        orphans = book.interrupt_orphans(owner_alive)
        lines = []
        for job, vms in orphans:
            lines.append(f"job {job.id} ({job.policy}) was interrupted (its daemon died)")
            if not vms or job.policy is None:
                continue
            try:
                policy = get_policy(ctx, job.policy).policy
                with PolicySession(ctx, policy, Cancel(), lease=False) as session:
                    removed = session.remove_leftovers(vms)
            except VmaccelError as exc:
                book.log(job.id, None, "warning", f"leftover snapshots not removed: {exc}")
                continue
            for line in removed:
                book.log(job.id, None, "info", f"removed leftover snapshot {line}")
            lines += [f"removed leftover snapshot {x}" for x in removed]
    return lines


class Daemon:
    """``vmaccel serve`` without the REST API (the application runs that beside it)."""

    def __init__(self, ctx: Context, options: ServeOptions) -> None:
        self.ctx, self.options = ctx, options
        self.owner = owner_id()
        self.stopping = threading.Event()
        self.runner: Runner | None = None

    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler: it only sets an event)."""
        self.stopping.set()

    def abort(self, reason: str = "the daemon was stopped twice") -> None:
        """Abort VMs in flight now (a second stop signal)."""
        self.stopping.set()
        if self.runner is not None:
            self.runner.abort(reason)

    def run(self, on_locked: Callable[[], None] = lambda: None) -> None:
        """Serve until :meth:`stop`; raises :class:`RepositoryLocked` when another daemon
        serves the repository. ``on_locked`` is called once the daemon holds the repository
        and has recovered from a crash (the application starts the REST API there)."""
        with DaemonLock(self.ctx.require_repo(), self.owner):
            for line in recover(self.ctx, self.owner):
                logger.warning("%s", line)
            notifier = open_notifier(self.ctx.config_dir, state_dir(self.ctx), self.ctx.env)
            with notifier:
                on_locked()
                self._loop(notifier)

    def _loop(self, notifier: Notifier) -> None:
        self.runner = Runner(
            self.ctx, self.owner, self.stopping, self.options.limits,
            on_finished=lambda p, job, vms: notify_run(notifier, p, job, vms),
        )  # fmt: skip
        scheduler = Scheduler(self.ctx, self.options, self.runner)
        checks = Checks(self.ctx, notifier, self.options.checks_every)
        logger.info("serving %s (tick %s s)", self.ctx.repo, self.options.tick)
        while not self.stopping.is_set():
            try:
                checks.maybe_run(scheduler.tick())
            except VmaccelError as exc:  # the catalog busy, a vCenter down: next tick
                logger.error("scheduler pass failed: %s", exc)
            self.stopping.wait(self.options.tick)
        self._shut_down(scheduler)

    def _shut_down(self, scheduler: Scheduler) -> None:
        assert self.runner is not None  # noqa: S101 - set by _loop
        if scheduler.threads:
            logger.info("stopping: no new VM starts; VMs in flight get %s s to finish",
                        self.options.stop_timeout)  # fmt: skip
        if not scheduler.wait_runs(self.options.stop_timeout):
            logger.warning("stop timeout: aborting the VMs in flight")
            self.runner.abort("the daemon stopped")
            if not scheduler.wait_runs(ABORT_GRACE):
                logger.error("runs still going after the abort: %s", ", ".join(scheduler.threads))
        logger.info("stopped")

"""The scheduler: a small loop over cronsim and the job table (no scheduler library).

Every ``tick`` seconds it reads the policies, queues a run for each enabled policy whose
schedule time has come (one queued or running run per policy at most: the job table says so,
in one transaction), starts every queued run in its own thread (manual runs from ``policy
run`` / the API too), and runs gc and ``verify --full`` on their own schedules.

Catch-up (documented in the README): on start-up, a policy whose latest schedule time passed
while no daemon ran (later than the schedule time of its last queued run) gets that one run,
at once, if its window is open now; older missed times are not run. A policy without any
run yet waits for its next schedule time. Schedule times are remembered per policy and
schedule: editing a schedule never starts a run by itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vmaccel.catalog.index.jobs import QUEUED
from vmaccel.catalog.index.protocols import JobIndex
from vmaccel.daemon.runner import Runner
from vmaccel.service import maintenance
from vmaccel.service.context import Context
from vmaccel.service.jobbook import queue_run
from vmaccel.service.jobs import catalog
from vmaccel.service.policies import PolicyRecord
from vmaccel.service.policyrun import Limits
from vmaccel.service.schedule import last_due, window_open
from vmaccel.vocabulary.errors import VmaccelError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    """How the daemon runs. ``tick``: seconds between scheduler passes; ``stop_timeout``:
    seconds a stop waits for VMs in flight before aborting them; ``gc_schedule`` and
    ``verify_schedule``: cron expressions in UTC (None: never) — by default gc daily at
    03:00 with a one-hour grace period and ``verify --full`` on Sundays at 04:00;
    ``checks_every``: seconds between the "no recent success" and "unprotected VMs" checks."""

    tick: float = 30.0
    stop_timeout: float = 300.0
    gc_schedule: str | None = "0 3 * * *"
    gc_grace: float = 3600.0
    verify_schedule: str | None = "0 4 * * 0"
    checks_every: float = 3600.0
    limits: Limits = field(default_factory=Limits)


class Scheduler:
    """See the module docstring. Not thread safe: one thread calls :meth:`tick`."""

    def __init__(
        self,
        ctx: Context,
        options: ServeOptions,
        runner: Runner,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ctx, self.options, self.runner, self.clock = ctx, options, runner, clock
        self.threads: dict[str, threading.Thread] = {}  # policy -> its running run
        self._fired: dict[tuple[str, str, str], float] = {}  # (policy, cron, tz) -> time
        self._maintenance: dict[str, float] = {}
        self._started = False

    def tick(self) -> dict[str, PolicyRecord]:
        """One pass: queue due runs, start queued ones, run due maintenance; returns the
        policies as read in this pass."""
        now = self.clock()
        policies = self._policies()
        with catalog(self.ctx) as r:
            for record in policies.values():
                if record.policy.enabled:
                    self._queue_if_due(r.index, record, now)
            queued = r.index.jobs(None, (QUEUED,), 1000)
        for job in reversed(queued):  # oldest first
            self._start(job.id, job.policy, policies)
        self._started = True
        self._reap()
        if not self.runner.stopping.is_set():
            self._maintain(now)
        return policies

    def _policies(self) -> dict[str, PolicyRecord]:
        from vmaccel.service.policies import list_policies

        return {p.policy.name: p for p in list_policies(self.ctx)}

    def _queue_if_due(self, index: JobIndex, record: PolicyRecord, now: float) -> None:
        p = record.policy
        key = (p.name, p.schedule, p.timezone)
        due = last_due(p.schedule, p.timezone, now)
        fired = self._fired.get(key)
        if fired is None:
            fired = self._first_seen(index, record, due, now)
            self._fired[key] = fired
        if due <= fired:
            return
        self._fired[key] = due
        trigger = "catch-up" if not self._started else "schedule"
        job, queued = queue_run(index, p.name, trigger, due)
        if not queued:
            logger.warning("policy %s: run %d still going at its next schedule time; skipped",
                           p.name, job.id)  # fmt: skip

    def _first_seen(
        self, index: JobIndex, record: PolicyRecord, due: float, now: float
    ) -> float:
        """The schedule time already served for a policy this daemon has not seen yet: on
        start-up, the catch-up rule decides; a policy added later waits for its next time."""
        p = record.policy
        last = index.last_due(p.name)
        if self._started or last is None or due <= last or due < record.created:
            return due
        if not window_open(p.window, p.timezone, now):
            logger.info("policy %s: missed the run of %s; its window is closed", p.name, due)
            return due
        logger.info("policy %s: catching up the run missed while no daemon ran", p.name)
        return last

    def _start(self, job_id: int, name: str | None, policies: dict[str, PolicyRecord]) -> None:
        if self.runner.stopping.is_set() or name is None or name in self.threads:
            return
        record = policies.get(name)
        if record is None:
            from vmaccel.service.jobs import cancel_job

            cancel_job(self.ctx, job_id)  # its policy was removed meanwhile
            return
        thread = threading.Thread(
            target=self._run, args=(record, job_id), name=f"policy-{name}", daemon=True
        )
        self.threads[name] = thread
        thread.start()

    def _run(self, record: PolicyRecord, job_id: int) -> None:
        try:
            job = self.runner.run(record.policy, job_id)
            if job is not None:
                logger.info("policy %s: run %d ended %s", record.policy.name, job.id, job.state)
        except VmaccelError as exc:
            logger.error("policy %s: run %d failed: %s", record.policy.name, job_id, exc)

    def _reap(self) -> None:
        for name, thread in list(self.threads.items()):
            if not thread.is_alive():
                del self.threads[name]

    def _maintain(self, now: float) -> None:
        """gc and verify --full when their schedule time has come (in this thread: the
        scheduler waits for them; runs already started go on meanwhile)."""
        for what, expr in (("gc", self.options.gc_schedule),
                           ("verify", self.options.verify_schedule)):  # fmt: skip
            if expr is None:
                continue
            due = last_due(expr, "UTC", now)
            if self._maintenance.setdefault(what, due) >= due:
                continue
            self._maintenance[what] = due
            try:
                if what == "gc":
                    report = maintenance.gc(self.ctx, grace_seconds=self.options.gc_grace)
                    logger.info("gc: %s", report.summary()[-1])
                else:
                    checked = maintenance.verify(self.ctx, full=True)
                    log = logger.info if checked.ok else logger.error
                    log("verify --full: %s", checked.summary()[-1])
            except VmaccelError as exc:
                logger.error("%s failed: %s", what, exc)

    def wait_runs(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every run thread; True when all ended."""
        deadline = time.monotonic() + timeout
        for thread in list(self.threads.values()):
            thread.join(max(0.0, deadline - time.monotonic()))
        self._reap()
        return not self.threads

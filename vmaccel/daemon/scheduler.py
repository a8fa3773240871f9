"""The scheduler: a small loop over cronsim and the job table (no scheduler library).

Every ``tick`` seconds it reads the policies, queues a run for each enabled policy whose
schedule time has come (one queued or running run per policy at most: the job table says so,
in one transaction), starts every queued run in a worker process of its own
(:mod:`vmaccel.daemon.workers`), and runs gc and ``verify --full`` on their own schedules.
Between passes, :meth:`Scheduler.start_queued` starts runs queued meanwhile (``policy run
--queue``, the API's run-now): it reads only the queued jobs, so the daemon calls it every
second or at once when a run is queued in its own process.

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
from vmaccel.daemon.workers import Workers
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
    local_backups: bool = False  # on a PostgreSQL catalog: back VMs up here, not via proxies
    limits: Limits = field(default_factory=Limits)


class Scheduler:
    """See the module docstring. Not thread safe: one thread calls :meth:`tick`."""

    def __init__(
        self,
        ctx: Context,
        options: ServeOptions,
        workers: Workers,
        stopping: threading.Event,
        held: set[int] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ctx, self.options, self.workers, self.clock = ctx, options, workers, clock
        self.stopping = stopping  # set: no run starts, no maintenance
        self.policies: dict[str, PolicyRecord] = {}  # as read by the latest pass
        # queued jobs that only the next pass starts again (their worker failed before its
        # claim: a catalog busy, ...), so a failing start is not repeated every second
        self.held = held if held is not None else set()
        self._fired: dict[tuple[str, str, str], float] = {}  # (policy, cron, tz) -> time
        self._maintenance: dict[str, float] = {}
        self._started = False

    def tick(self) -> dict[str, PolicyRecord]:
        """One pass: queue due runs, start queued ones, run due maintenance; returns the
        policies as read in this pass."""
        now = self.clock()
        policies = self.policies = self._policies()
        with catalog(self.ctx) as r:
            for record in policies.values():
                if record.policy.enabled:
                    self._queue_if_due(r.index, record, now)
            queued = r.index.jobs(None, (QUEUED,), 1000)
        self.held.clear()
        for job in reversed(queued):  # oldest first
            self._start(job.id, job.policy, policies)
        self._started = True
        if not self.stopping.is_set():
            self._maintain(now)
        return policies

    def start_queued(self) -> None:
        """Start the runs queued since the last pass (a policy added meanwhile is read)."""
        if self.stopping.is_set():
            return
        with catalog(self.ctx) as r:
            queued = [j for j in r.index.jobs(None, (QUEUED,), 1000) if j.id not in self.held
                      and j.policy is not None and not self.workers.busy(j.policy)]  # fmt: skip
        if any(j.policy not in self.policies for j in queued):
            self.policies = self._policies()
        for job in reversed(queued):
            self._start(job.id, job.policy, self.policies)

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
        if self.stopping.is_set() or name is None or self.workers.busy(name):
            return
        record = policies.get(name)
        if record is None:
            from vmaccel.service.jobs import cancel_job

            cancel_job(self.ctx, job_id)  # its policy was removed meanwhile
            return
        try:
            self.workers.start_run(record.policy, job_id)
        except OSError as exc:  # no memory, no processes left: the next pass tries again
            logger.error("policy %s: cannot start a worker for run %d: %s", name, job_id, exc)

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

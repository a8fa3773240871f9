"""The dashboard's numbers, read through the same service calls as the API's ``/jobs``,
``/vms`` and ``/repository``: jobs of the last day and week by outcome, VMs protected or
not, repository usage, the last verify and anomaly flags.

A VM counts as protected when its newest restore point started within
:data:`PROTECTED_HOURS`; otherwise it is listed as stale. VMs a policy selects but that
were never backed up show on the policy's "test selection" (that needs vCenter, so the
dashboard does not resolve selections on every load).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from vmaccel.catalog.stats import RepositoryStats
from vmaccel.service import jobs, repository, restorepoints
from vmaccel.service.context import Context
from vmaccel.service.jobs import JobRecord
from vmaccel.service.restorepoints import VmSummary

PROTECTED_HOURS = 48
JOBS_LOOKED_AT = 1000  # newest jobs read for the counts (a week of hourly policies fits)
OUTCOMES = {
    "succeeded": "success",
    "warning": "warning",
    "failed": "failure",
    "interrupted": "failure",
    "cancelled": "failure",
    "queued": "active",
    "running": "active",
}
GOOD_VERDICTS = frozenset({"normal", "ok"})


@dataclass(frozen=True)
class JobCounts:
    """Jobs queued within a period, by outcome (``success``, ``warning``, ``failure``,
    ``active``)."""

    label: str
    success: int
    warning: int
    failure: int
    active: int


@dataclass(frozen=True)
class Dashboard:
    """Everything the dashboard shows. ``stale``: VMs whose newest restore point is older
    than :data:`PROTECTED_HOURS`; ``flagged``: VMs whose newest verdict is not normal."""

    periods: tuple[JobCounts, ...]
    protected: tuple[VmSummary, ...]
    stale: tuple[VmSummary, ...]
    flagged: tuple[VmSummary, ...]
    stats: RepositoryStats
    last_verify: JobRecord | None
    recent: tuple[JobRecord, ...]


def count_jobs(found: list[JobRecord], label: str, since: float) -> JobCounts:
    """The jobs of ``found`` queued at or after ``since`` (UNIX s), by outcome."""
    counts = {"success": 0, "warning": 0, "failure": 0, "active": 0}
    for job in found:
        if job.queued >= since:
            counts[OUTCOMES.get(job.state, "failure")] += 1
    return JobCounts(label, **counts)


def dashboard(ctx: Context, now: float | None = None) -> Dashboard:
    """The dashboard as of ``now`` (UNIX s, default the current time)."""
    now = time.time() if now is None else now
    found = jobs.list_jobs(ctx, limit=JOBS_LOOKED_AT)
    periods = (
        count_jobs(found, "last 24 hours", now - 86400),
        count_jobs(found, "last 7 days", now - 7 * 86400),
    )
    vms = restorepoints.list_vms(ctx)
    horizon = now - PROTECTED_HOURS * 3600
    verify = next((j for j in found if j.kind == "verify"), None)
    return Dashboard(
        periods=periods,
        protected=tuple(v for v in vms if v.latest >= horizon),
        stale=tuple(v for v in vms if v.latest < horizon),
        flagged=tuple(v for v in vms if v.latest_verdict not in GOOD_VERDICTS | {None}),
        stats=repository.stats(ctx),
        last_verify=verify,
        recent=tuple(found[:10]),
    )

"""What the daemon tells people, built from the job rows: the end of each policy run, and the
periodic checks that catch what failure-only mail misses when nothing runs at all.

- ``stale``: a policy whose last success (or, before its first one, its creation) is older
  than twice its schedule's period: one missed run is tolerated, two are reported;
- ``unprotected``: VMs of a vCenter that no enabled policy selects (once a day per vCenter);
- ``digest``: the day's runs of a policy (once a day).

Delivery is :mod:`vmaccel.daemon.notify`'s: a notice is queued durably and never fails a run.
Each check runs every ``every`` seconds; the notifier's ``once`` keys keep repeats out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime

from vmaccel.catalog.index.jobs import JobRow, VmJobRow
from vmaccel.daemon.notice import subscriptions
from vmaccel.daemon.notify import (
    Notifier,
    RunSummary,
    VmOutcome,
    digest_notice,
    stale_notice,
    unprotected_notice,
)
from vmaccel.service.context import Context
from vmaccel.service.coverage import unprotected_vms
from vmaccel.service.jobs import catalog
from vmaccel.service.policies import PolicyRecord
from vmaccel.service.policyspec import Policy
from vmaccel.service.schedule import period
from vmaccel.vocabulary.errors import VmaccelError

logger = logging.getLogger(__name__)
DAY = 86400.0


def run_summary(policy: Policy, job: JobRow, vms: Sequence[VmJobRow]) -> RunSummary:
    """The notifier's record of one ended run."""
    outcomes = tuple(
        VmOutcome(
            v.vm, v.state, (v.error,) if v.error else (), v.warnings, v.bytes_read,
            v.bytes_stored, max(1, v.attempt),
        )
        for v in vms
    )  # fmt: skip
    started = job.started or job.queued
    return RunSummary(policy.name, job.id, job.state, started, job.finished or started, outcomes,
                      policy.vcenter)  # fmt: skip


def notify_run(notifier: Notifier, policy: Policy, job: JobRow, vms: list[VmJobRow]) -> None:
    """Queue the end-of-run notice for the policy's channels (if its events ask for it)."""
    subs = subscriptions(policy.notify_channels, policy.notify_events)
    if subs:
        notifier.run_finished(run_summary(policy, job, vms), subs)


def _channels(policy: Policy, event: str) -> tuple[str, ...]:
    return policy.notify_channels if event in policy.notify_events else ()


def _day(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")


class Checks:
    """The periodic checks (see the module docstring); :meth:`run` when due."""

    def __init__(
        self,
        ctx: Context,
        notifier: Notifier,
        every: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ctx, self.notifier, self.every, self.clock = ctx, notifier, every, clock
        self._last = 0.0

    def maybe_run(self, policies: Mapping[str, PolicyRecord]) -> None:
        now = self.clock()
        if now - self._last < self.every:
            return
        self._last = now
        try:
            self.stale(policies.values(), now)
            self.digest(policies.values(), now)
            self.unprotected([p.policy for p in policies.values()], now)
        except VmaccelError as exc:  # vCenter down, ...: the next pass tries again
            logger.warning("periodic checks failed: %s", exc)

    def stale(self, records: Iterable[PolicyRecord], now: float) -> None:
        with catalog(self.ctx) as r:
            for record in records:
                p = record.policy
                channels = _channels(p, "stale")
                if not (p.enabled and channels):
                    continue
                last = r.index.last_success(p.name)
                allowed = 2 * period(p.schedule, p.timezone, now)
                if now - (last or record.created) > allowed:
                    notice = stale_notice(p.name, last, allowed, now)
                    self.notifier.send(notice, channels, once=f"stale:{p.name}:{last}")

    def digest(self, records: Iterable[PolicyRecord], now: float) -> None:
        with catalog(self.ctx) as r:
            for record in records:
                p = record.policy
                channels = _channels(p, "digest")
                if not channels:
                    continue
                jobs = [j for j in r.index.jobs(p.name, (), 500) if (j.finished or 0) > now - DAY]
                runs = [run_summary(p, j, r.index.vm_jobs(j.id)) for j in jobs]
                notice = digest_notice(runs, now - DAY, now)
                self.notifier.send(notice, channels, once=f"digest:{p.name}:{_day(now)}")

    def unprotected(self, policies: Sequence[Policy], now: float) -> None:
        for vcenter in sorted({p.vcenter for p in policies}):
            channels = tuple(
                dict.fromkeys(c for p in policies if p.vcenter == vcenter
                              for c in _channels(p, "unprotected"))
            )  # fmt: skip
            if not channels:
                continue
            names = unprotected_vms(self.ctx, vcenter, policies)
            if names:
                notice = unprotected_notice(vcenter, names, now)
                self.notifier.send(notice, channels, once=f"unprotected:{vcenter}:{_day(now)}")

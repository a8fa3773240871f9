"""vmaccel.daemon.scheduler without vCenter: when runs are queued (schedule times, the
catch-up rule on start-up, one run per policy at a time, schedule edits); a fake clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import pytest

from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.daemon.checks import Checks
from vmaccel.daemon.notify import Notice, Notifier
from vmaccel.daemon.scheduler import Scheduler, ServeOptions
from vmaccel.daemon.workers import Workers
from vmaccel.service.context import Context
from vmaccel.service.jobs import catalog, list_jobs
from vmaccel.service.policies import add_policy, edit_policy, list_policies
from vmaccel.service.policyspec import Policy
from vmaccel.service.schedule import last_due

HOURLY = "0 * * * *"


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    Repository.init(tmp_path / "repo", RepositoryConfig())
    return Context(tmp_path / "repo", config_dir=tmp_path / "config")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _scheduler(ctx: Context, clock: Clock) -> Scheduler:
    stopped = threading.Event()
    stopped.set()  # queue only: no run starts, no maintenance
    options = ServeOptions(gc_schedule=None, verify_schedule=None)
    return Scheduler(ctx, options, Workers(ctx, options.limits), stopped, clock=clock)


def _end(ctx: Context, job_id: int) -> None:
    with catalog(ctx) as r, r.index.writing():
        r.index.finish_job(job_id, "succeeded", 0.0, {})


def _policy(name: str, **fields: object) -> Policy:
    return Policy.from_dict({"name": name, "vcenter": "vc", "vm_patterns": ["*"],
                             "schedule": HOURLY, **fields})  # fmt: skip


def test_catch_up_once_on_start_then_on_schedule(ctx: Context) -> None:
    hour = last_due(HOURLY, "UTC", time.time() + 10 * 3600)  # a whole hour in the future
    add_policy(ctx, _policy("missed"))
    add_policy(ctx, _policy("new"))  # never ran: waits for its next time
    add_policy(ctx, _policy("closed", window="00:00:00-00:00:01"))  # window shut at start
    with catalog(ctx) as r, r.index.writing():
        for name in ("missed", "closed"):
            r.index.add_job("policy", name, "schedule", hour - 7200, hour - 7200)
        for job in r.index.jobs():
            r.index.finish_job(job.id, "succeeded", hour - 7000, {})
    clock = Clock(hour + 1800)
    sched = _scheduler(ctx, clock)
    sched.tick()
    (caught,) = list_jobs(ctx, state="queued")
    assert (caught.policy, caught.trigger) == ("missed", "catch-up")
    clock.now += 60
    sched.tick()  # nothing new within the hour, and only one catch-up
    assert len(list_jobs(ctx, state="queued")) == 1
    clock.now = hour + 3600 + 1  # the next hour: every policy is due; "missed" still queued
    sched.tick()
    queued = {j.policy: j.trigger for j in list_jobs(ctx, state="queued")}
    assert queued == {"missed": "catch-up", "new": "schedule", "closed": "schedule"}
    _end(ctx, caught.id)
    clock.now += 60
    sched.tick()  # the hour was served (skipped while the catch-up ran): not queued again
    assert "missed" not in {j.policy for j in list_jobs(ctx, state="queued")}


def test_editing_a_schedule_starts_no_run(ctx: Context) -> None:
    hour = last_due(HOURLY, "UTC", time.time() + 10 * 3600)
    add_policy(ctx, _policy("p"))
    clock = Clock(hour + 1800)
    sched = _scheduler(ctx, clock)
    sched.tick()
    edit_policy(ctx, "p", {"schedule": "15 * * * *"})  # 15 past passed 15 minutes ago
    clock.now += 60
    sched.tick()
    assert list_jobs(ctx) == []
    clock.now = hour + 3600 + 15 * 60
    sched.tick()
    assert [j.trigger for j in list_jobs(ctx)] == ["schedule"]


class Sent:
    """A notifier that records what it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[str, ...], str | None]] = []

    def send(self, notice: Notice, channels: Iterable[str], once: str | None = None) -> bool:
        self.sent.append((notice.kind, tuple(channels), once))
        return True


def test_a_policy_without_recent_success_is_reported(ctx: Context) -> None:
    add_policy(ctx, _policy("quiet", notify_channels=["ops"], notify_events=["stale"]))
    add_policy(ctx, _policy("deaf"))  # subscribes to nothing: never reported
    notifier = Sent()
    clock = Clock(time.time() + 1800)
    checks = Checks(ctx, cast(Notifier, notifier), every=600, clock=clock)
    policies = {p.policy.name: p for p in list_policies(ctx)}
    checks.maybe_run(policies)
    assert notifier.sent == []  # half an hour old, hourly: within twice the period
    clock.now += 3 * 3600
    checks.maybe_run(policies)
    assert [(kind, ch) for kind, ch, _ in notifier.sent] == [("stale", ("ops",))]
    clock.now += 60
    checks.maybe_run(policies)
    assert len(notifier.sent) == 1  # checked every `every` seconds, not every tick

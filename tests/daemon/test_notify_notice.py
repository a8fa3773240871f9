"""The pure side of notifications: which events a run raises, which channels hear of them,
and what the notices say."""

from __future__ import annotations

import json

import pytest

from vmaccel.daemon.notify import (
    Notice,
    RunSummary,
    Subscription,
    VmOutcome,
    channels_for,
    digest_notice,
    run_events,
    run_notice,
    stale_notice,
    subscriptions,
    unprotected_notice,
)
from vmaccel.vocabulary.errors import UsageError

T0 = 1_780_000_000.0  # 2026-05-28T20:26:40Z


def _run(state: str, *vms: VmOutcome, policy: str = "gold", run_id: int = 7) -> RunSummary:
    return RunSummary(policy, run_id, state, T0, T0 + 3725, vms)


@pytest.mark.parametrize(
    ("state", "events"),
    [
        ("succeeded", {"always"}),
        ("warning", {"always", "warning"}),
        ("failed", {"always", "warning", "failure"}),
        ("interrupted", {"always", "warning", "failure"}),
        ("cancelled", {"always"}),
    ],
)
def test_run_events(state: str, events: set[str]) -> None:
    assert run_events(state) == events


def test_channels_for_keeps_order_without_repeats() -> None:
    subs = [
        Subscription("mail", frozenset({"failure", "digest"})),
        Subscription("chat", frozenset({"always"})),
        Subscription("mail", frozenset({"always"})),
    ]
    assert channels_for(subs, run_events("failed")) == ("mail", "chat")
    assert channels_for(subs, "digest") == ("mail",)
    assert channels_for(subs, "stale") == ()


def test_subscriptions_from_a_policys_flat_fields() -> None:
    subs = subscriptions(["mail", "chat", "mail"], ["failure", "stale"])
    assert [s.channel for s in subs] == ["mail", "chat"]
    assert channels_for(subs, "stale") == ("mail", "chat")
    assert subscriptions(["mail"], []) == ()


def test_subscription_round_trip_and_validation() -> None:
    sub = Subscription.from_dict({"channel": "mail", "events": ["failure", "digest"]})
    assert sub.to_dict() == {"channel": "mail", "events": ["digest", "failure"]}
    assert Subscription.from_dict({"channel": "x", "events": "always"}).events == {"always"}
    with pytest.raises(UsageError, match="must be among"):
        Subscription("mail", frozenset({"sometimes"}))
    with pytest.raises(UsageError):
        Subscription("mail", frozenset())


def test_run_notice_lists_failures_first_with_errors() -> None:
    errors = tuple(f"line {i}" for i in range(7))
    run = _run(
        "failed",
        VmOutcome("app01", "succeeded", bytes_read=2 * 1024**3, bytes_stored=1024**3, attempts=3),
        VmOutcome("db01", "failed", errors=errors, bytes_read=512),
    )
    notice = run_notice(run)
    assert notice.subject == "vmaccel: policy gold failed (1 of 2 VMs failed)"
    assert (notice.kind, notice.severity, notice.created) == ("run", "error", T0 + 3725)
    lines = notice.text.splitlines()
    assert lines[:4] == [
        "Policy gold run 7 failed.",
        "Started 2026-05-28T20:26:40Z, took 1 h 02 min.",
        "VMs: 1 failed, 1 succeeded after retry.",
        "Read 2.0 GiB, stored 1.0 GiB.",
    ]
    assert lines[5] == "  db01: failed (read 512 B, stored 0 B)"
    assert lines[6:11] == [f"    error: line {i}" for i in range(5)]
    assert lines[11] == "    ... 2 more error line(s)"
    assert lines[12] == "  app01: succeeded after retry (read 2.0 GiB, stored 1.0 GiB, 3 attempts)"
    assert dict(notice.facts)["State"] == "failed"
    assert notice.summary["bytes_stored"] == 1024**3
    assert notice.summary["vms"][1]["errors"] == list(errors)


def test_run_notice_severity_follows_state() -> None:
    assert run_notice(_run("succeeded", VmOutcome("a", "succeeded"))).severity == "info"
    warned = run_notice(_run("warning", VmOutcome("a", "warning", warnings=("quiesce off",))))
    assert warned.severity == "warning"
    assert warned.subject == "vmaccel: policy gold warning (1 VM)"
    assert "    warning: quiesce off" in warned.text


def test_notice_survives_json() -> None:
    notice = run_notice(_run("failed", VmOutcome("db01", "failed", errors=("boom",))))
    assert Notice.from_dict(json.loads(json.dumps(notice.to_dict()))) == notice


def test_digest_counts_states_and_names_failed_vms() -> None:
    runs = [
        _run("succeeded", VmOutcome("a", "succeeded"), policy="gold", run_id=1),
        _run("failed", VmOutcome("b", "failed", errors=("no space",)), policy="silver", run_id=2),
    ]
    notice = digest_notice(runs, T0 - 86400, T0)
    assert notice.subject == "vmaccel digest: 1 failed, 1 succeeded"
    assert notice.severity == "error"
    assert "silver run 2: failed, 1 failed, stored 0 B" in notice.text
    assert "    error: no space" in notice.text
    assert [r["run_id"] for r in notice.summary["runs"]] == [1, 2]
    empty = digest_notice([], T0 - 86400, T0)
    assert (empty.subject, empty.severity) == ("vmaccel digest: no runs", "info")


def test_stale_and_unprotected_notices() -> None:
    never = stale_notice("gold", None, 2 * 86400, T0)
    assert never.subject == "vmaccel: policy gold has no recent successful backup"
    assert "has never had a successful run" in never.text
    assert "allows 48 h 00 min" in never.text
    late = stale_notice("gold", T0 - 3 * 86400, 2 * 86400, T0)
    assert "since 2026-05-25T20:26:40Z (72 h 00 min ago)" in late.text
    assert dict(late.facts)["Last success"] == "2026-05-25T20:26:40Z"
    lone = unprotected_notice("vc1", ["web02", "app01"], T0)
    assert lone.subject == "vmaccel: 2 unprotected VM(s) in vc1"
    assert lone.summary["vms"] == ["app01", "web02"]
    assert lone.text.splitlines()[1:] == ["  app01", "  web02"]

"""What a notification says: :class:`Notice`, built by pure functions from run summaries.

No I/O here. The daemon turns its job rows into :class:`RunSummary` records; the builders turn
those into notices whose subject fits a mail subject line, whose ``text`` is plain text for a
mail body or a chat message, whose ``facts`` are the few key/value pairs a card shows, and
whose ``summary`` is the structured document webhooks of format ``json`` receive.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from vmaccel.vocabulary.errors import UsageError
from vmaccel.vocabulary.units import format_bytes, format_duration, format_time

Severity = Literal["info", "warning", "error"]
Event = Literal["failure", "warning", "always", "digest", "stale", "unprotected"]
EVENTS: tuple[str, ...] = get_args(Event)

FAILED_STATES = frozenset({"failed", "interrupted"})
"""Run or VM states that count as a failure (``cancelled`` is an operator's choice, not one)."""
WARNING_STATES = frozenset({"warning"})
MAX_ERROR_LINES = 5  # per VM: the first lines are the cause, the rest is in `vmaccel jobs log`


@dataclass(frozen=True)
class VmOutcome:
    """One VM job of a run. ``bytes_*`` in bytes; ``attempts`` counts the first try (>= 1)."""

    vm: str
    state: str
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    bytes_read: int = 0
    bytes_stored: int = 0
    attempts: int = 1

    @property
    def label(self) -> str:
        """The state as people read it: "succeeded after retry" for a late success."""
        if self.state == "succeeded" and self.attempts > 1:
            return "succeeded after retry"
        return self.state


@dataclass(frozen=True)
class RunSummary:
    """One finished policy run. ``started``/``ended`` are Unix seconds; ``state`` is the run's
    job state (succeeded, warning, failed, interrupted, cancelled)."""

    policy: str
    run_id: str | int
    state: str
    started: float
    ended: float
    vms: tuple[VmOutcome, ...] = ()
    vcenter: str = ""

    @property
    def bytes_read(self) -> int:
        return sum(v.bytes_read for v in self.vms)

    @property
    def bytes_stored(self) -> int:
        return sum(v.bytes_stored for v in self.vms)

    @property
    def duration(self) -> float:
        """Seconds from start to end (0 when the clock went backwards)."""
        return max(0.0, self.ended - self.started)


@dataclass(frozen=True)
class Notice:
    """One message to deliver. ``summary`` is JSON-serialisable and is not mutated after
    construction; ``created`` in Unix seconds."""

    kind: str
    subject: str
    severity: Severity
    text: str
    facts: tuple[tuple[str, str], ...] = ()
    summary: Mapping[str, Any] = field(default_factory=dict)
    created: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "severity": self.severity,
            "text": self.text,
            "facts": [list(f) for f in self.facts],
            "summary": dict(self.summary),
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Notice:
        return cls(
            kind=str(data["kind"]),
            subject=str(data["subject"]),
            severity=cast(Severity, data["severity"]),
            text=str(data["text"]),
            facts=tuple((str(k), str(v)) for k, v in data.get("facts", ())),
            summary=dict(data.get("summary", {})),
            created=float(data.get("created", 0.0)),
        )


@dataclass(frozen=True)
class Subscription:
    """A policy's wish: notices of ``events`` go to the channel named ``channel``."""

    channel: str
    events: frozenset[str]

    def __post_init__(self) -> None:
        unknown = set(self.events) - set(EVENTS)
        if unknown or not self.events:
            raise UsageError(
                f"notification events for {self.channel!r} must be among {', '.join(EVENTS)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"channel": self.channel, "events": sorted(self.events)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Subscription:
        events = data.get("events", ())
        if isinstance(events, str):
            events = [events]
        return cls(channel=str(data["channel"]), events=frozenset(str(e) for e in events))


def subscriptions(channels: Iterable[str], events: Iterable[str]) -> tuple[Subscription, ...]:
    """Every channel of ``channels`` subscribed to all of ``events`` (a policy's flat
    ``notify_channels`` / ``notify_events`` pair); () when either is empty."""
    wanted = frozenset(events)
    return tuple(Subscription(c, wanted) for c in dict.fromkeys(channels)) if wanted else ()


def run_events(state: str) -> frozenset[str]:
    """The events a finished run in ``state`` raises: always "always"; "warning" for a
    warning or worse; "failure" for a failed or interrupted run."""
    events = {"always"}
    if state in FAILED_STATES:
        events |= {"failure", "warning"}
    elif state in WARNING_STATES:
        events.add("warning")
    return frozenset(events)


def channels_for(subs: Iterable[Subscription], events: str | Iterable[str]) -> tuple[str, ...]:
    """Names of the channels subscribed to any of ``events``, in first-seen order, no repeats."""
    wanted = {events} if isinstance(events, str) else set(events)
    names: dict[str, None] = {}
    for sub in subs:
        if sub.events & wanted:
            names.setdefault(sub.channel, None)
    return tuple(names)


def _severity(state: str) -> Severity:
    if state in FAILED_STATES:
        return "error"
    return "warning" if state in WARNING_STATES else "info"


def _vm_lines(vm: VmOutcome) -> list[str]:
    moved = f"read {format_bytes(vm.bytes_read)}, stored {format_bytes(vm.bytes_stored)}"
    tries = f", {vm.attempts} attempts" if vm.attempts > 1 else ""
    lines = [f"  {vm.vm}: {vm.label} ({moved}{tries})"]
    lines += [f"    error: {e}" for e in vm.errors[:MAX_ERROR_LINES]]
    if len(vm.errors) > MAX_ERROR_LINES:
        lines.append(f"    ... {len(vm.errors) - MAX_ERROR_LINES} more error line(s)")
    lines += [f"    warning: {w}" for w in vm.warnings[:MAX_ERROR_LINES]]
    return lines


def _vm_dict(vm: VmOutcome) -> dict[str, Any]:
    return {
        "vm": vm.vm,
        "state": vm.state,
        "label": vm.label,
        "attempts": vm.attempts,
        "bytes_read": vm.bytes_read,
        "bytes_stored": vm.bytes_stored,
        "errors": list(vm.errors),
        "warnings": list(vm.warnings),
    }


def _run_dict(run: RunSummary) -> dict[str, Any]:
    return {
        "policy": run.policy,
        "run_id": run.run_id,
        "vcenter": run.vcenter,
        "state": run.state,
        "started": run.started,
        "ended": run.ended,
        "duration": run.duration,
        "bytes_read": run.bytes_read,
        "bytes_stored": run.bytes_stored,
        "vms": [_vm_dict(v) for v in run.vms],
    }


def _counts(vms: Iterable[VmOutcome]) -> str:
    counted = Counter(v.label for v in vms)
    return ", ".join(f"{n} {label}" for label, n in sorted(counted.items())) or "no VMs"


def run_notice(run: RunSummary) -> Notice:
    """The notice of one finished run: subject names the policy, the state and the VM counts;
    the text lists every VM (errors first lines included) and the run's totals."""
    bad = [v for v in run.vms if v.state in FAILED_STATES]
    subject = f"vmaccel: policy {run.policy} {run.state}"
    if bad:
        subject += f" ({len(bad)} of {len(run.vms)} VMs failed)"
    elif run.vms:
        subject += f" ({len(run.vms)} VM{'s' if len(run.vms) != 1 else ''})"
    lines = [
        f"Policy {run.policy} run {run.run_id} {run.state}.",
        f"Started {format_time(run.started)}, took {format_duration(run.duration)}.",
        f"VMs: {_counts(run.vms)}.",
        f"Read {format_bytes(run.bytes_read)}, stored {format_bytes(run.bytes_stored)}.",
        "",
    ]
    for vm in sorted(run.vms, key=lambda v: (v.state not in FAILED_STATES, v.vm)):
        lines += _vm_lines(vm)
    facts = (
        ("Policy", run.policy),
        ("Run", str(run.run_id)),
        ("State", run.state),
        ("VMs", _counts(run.vms)),
        ("Stored", format_bytes(run.bytes_stored)),
        ("Duration", format_duration(run.duration)),
    )
    return Notice(
        kind="run",
        subject=subject,
        severity=_severity(run.state),
        text="\n".join(lines).rstrip() + "\n",
        facts=facts,
        summary=_run_dict(run),
        created=run.ended,
    )


def digest_notice(runs: Sequence[RunSummary], since: float, until: float) -> Notice:
    """One notice summing up the ``runs`` that ended in [``since``, ``until``) (Unix seconds):
    counts per state, one line per run, the failed VMs with their first error lines."""
    states = Counter(r.state for r in runs)
    worst = next((s for s in ("failed", "interrupted", "warning") if states[s]), "succeeded")
    tally = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no runs"
    lines = [f"vmaccel runs from {format_time(since)} to {format_time(until)}: {tally}.", ""]
    for run in sorted(runs, key=lambda r: r.started):
        lines.append(
            f"{format_time(run.started)}  {run.policy} run {run.run_id}: {run.state}, "
            f"{_counts(run.vms)}, stored {format_bytes(run.bytes_stored)}"
        )
        for vm in run.vms:
            if vm.state in FAILED_STATES:
                lines += _vm_lines(vm)
    return Notice(
        kind="digest",
        subject=f"vmaccel digest: {tally}",
        severity=_severity(worst),
        text="\n".join(lines).rstrip() + "\n",
        facts=(("Period", f"{format_time(since)} - {format_time(until)}"), ("Runs", tally)),
        summary={"since": since, "until": until, "runs": [_run_dict(r) for r in runs]},
        created=until,
    )


def stale_notice(policy: str, last_success: float | None, allowed: float, now: float) -> Notice:
    """Policy ``policy`` has had no successful run for longer than its schedule allows
    (``allowed`` seconds); ``last_success`` is None when it never succeeded."""
    if last_success is None:
        since = "has never had a successful run"
    else:
        since = (
            f"has had no successful run since {format_time(last_success)} "
            f"({format_duration(now - last_success)} ago)"
        )
    text = (
        f"Policy {policy} {since}; its schedule allows {format_duration(allowed)} between "
        "successful runs. Check the daemon, the policy's window and `vmaccel jobs list`.\n"
    )
    return Notice(
        kind="stale",
        subject=f"vmaccel: policy {policy} has no recent successful backup",
        severity="error",
        text=text,
        facts=(("Policy", policy), ("Last success", _when(last_success))),
        summary={"policy": policy, "last_success": last_success, "allowed": allowed, "now": now},
        created=now,
    )


def _when(ts: float | None) -> str:
    return "never" if ts is None else format_time(ts)


def unprotected_notice(vcenter: str, vms: Sequence[str], now: float | None = None) -> Notice:
    """The VMs of ``vcenter`` that no policy selects (sorted in the text and summary)."""
    names = sorted(vms)
    now = time.time() if now is None else now
    text = (
        f"{len(names)} VM(s) in vCenter {vcenter} are selected by no policy and are not "
        "backed up:\n" + "".join(f"  {n}\n" for n in names)
    )
    return Notice(
        kind="unprotected",
        subject=f"vmaccel: {len(names)} unprotected VM(s) in {vcenter}",
        severity="warning",
        text=text,
        facts=(("vCenter", vcenter), ("Unprotected VMs", str(len(names)))),
        summary={"vcenter": vcenter, "vms": names, "now": now},
        created=now,
    )

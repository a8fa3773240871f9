"""Policies: add, edit, show, list, remove, their history, declarative files (``apply``), a
live dry run (``test``) and "run now". Stored in the catalog with every change recorded.

A policy file is TOML with one ``[[policy]]`` table per policy, its keys the fields of
:class:`~vmaccel.service.policyspec.Policy`. ``apply`` makes the catalog match the file: adds
what is new, changes what differs, removes what the file no longer names.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmaccel.catalog.index.policies import PolicyChangeRow, PolicyRow
from vmaccel.service.cancel import Cancel
from vmaccel.service.context import Context
from vmaccel.service.jobs import JobRecord, catalog
from vmaccel.service.policyspec import Policy
from vmaccel.service.schedule import next_due
from vmaccel.vocabulary.errors import NotFound, UsageError
from vmaccel.vocabulary.units import format_time

if TYPE_CHECKING:
    from vmaccel.service.policyplan import VmPlan

__all__ = [
    "ApplyReport",
    "Policy",
    "PolicyChange",
    "PolicyRecord",
    "PolicyTest",
    "add_policy",
    "apply_policies",
    "edit_policy",
    "get_policy",
    "list_policies",
    "load_policy_file",
    "policy_history",
    "remove_policy",
    "run_policy_now",
    "test_policy",
]


@dataclass(frozen=True)
class PolicyRecord:
    """A stored policy: its spec, ``version`` (changes so far), ``created``/``updated``."""

    policy: Policy
    version: int
    created: float
    updated: float

    @classmethod
    def of(cls, row: PolicyRow) -> PolicyRecord:
        return cls(Policy.from_dict(row.spec), row.version, row.created, row.updated)

    def next_run(self, now: float | None = None) -> float:
        p = self.policy
        return next_due(p.schedule, p.timezone, time.time() if now is None else now)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.policy.to_dict(),
            "version": self.version,
            "created": self.created,
            "updated": self.updated,
            "next_run": self.next_run() if self.policy.enabled else None,
        }

    def summary(self) -> list[str]:
        p = self.policy
        lines = [f"{p.name} (version {self.version}, updated {format_time(self.updated)})"]
        lines += [f"  {k}: {v}" for k, v in p.to_dict().items() if k != "name"]
        if p.enabled:
            lines.append(f"  next run: {format_time(self.next_run())}")
        return lines


@dataclass(frozen=True)
class PolicyChange:
    id: int
    policy: str
    version: int
    at: float
    action: str
    spec: Mapping[str, Any] | None
    who: str

    @classmethod
    def of(cls, row: PolicyChangeRow) -> PolicyChange:
        return cls(row.id, row.policy, row.version, row.at, row.action, row.spec, row.who)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FieldChange:
    field: str
    old: Any
    new: Any


@dataclass(frozen=True)
class PolicyDiff:
    """One policy of an apply: ``action`` add, edit, remove or same; ``changes`` by field."""

    name: str
    action: str
    changes: tuple[FieldChange, ...] = ()


@dataclass(frozen=True)
class ApplyReport:
    dry_run: bool
    diffs: tuple[PolicyDiff, ...]

    @property
    def changed(self) -> bool:
        return any(d.action != "same" for d in self.diffs)

    def to_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "changed": self.changed, "policies": [
            asdict(d) for d in self.diffs]}  # fmt: skip

    def summary(self) -> list[str]:
        signs = {"add": "+", "remove": "-", "edit": "~", "same": "="}
        lines = []
        for d in self.diffs:
            lines.append(f"{signs[d.action]} {d.name} ({d.action})")
            lines += [f"    {c.field}: {c.old!r} -> {c.new!r}" for c in d.changes]
        verb = "would change" if self.dry_run else "changed"
        n = sum(d.action != "same" for d in self.diffs)
        lines.append(f"{verb} {n} polic{'y' if n == 1 else 'ies'}")
        return lines


def _now() -> float:
    return time.time()


def add_policy(ctx: Context, policy: Policy, who: str = "cli") -> PolicyRecord:
    """Store a new policy; :class:`UsageError` when the name is taken."""
    with catalog(ctx) as r, r.index.writing():
        if r.index.policy(policy.name) is not None:
            raise UsageError(f"policy {policy.name} exists: edit it or remove it first")
        return PolicyRecord.of(r.index.put_policy(policy.name, policy.to_dict(), _now(), who))


def edit_policy(
    ctx: Context, name: str, changes: Mapping[str, Any], who: str = "cli"
) -> PolicyRecord:
    """Change fields of ``name`` (validated as a whole); records the change."""
    with catalog(ctx) as r, r.index.writing():
        new = _get(r.index.policy(name), name).policy.changed(changes)
        return PolicyRecord.of(r.index.put_policy(name, new.to_dict(), _now(), who))


def get_policy(ctx: Context, name: str) -> PolicyRecord:
    with catalog(ctx) as r:
        return _get(r.index.policy(name), name)


def list_policies(ctx: Context) -> list[PolicyRecord]:
    with catalog(ctx) as r:
        return [PolicyRecord.of(p) for p in r.index.policies()]


def remove_policy(ctx: Context, name: str, who: str = "cli") -> PolicyRecord:
    """Remove ``name`` (its history and job history stay); returns what it was."""
    with catalog(ctx) as r, r.index.writing():
        return _get(r.index.delete_policy(name, _now(), who), name)


def policy_history(ctx: Context, name: str) -> list[PolicyChange]:
    """Every change of ``name``, oldest first; :class:`NotFound` when it never existed."""
    with catalog(ctx) as r:
        changes = [PolicyChange.of(c) for c in r.index.policy_changes(name)]
    if not changes:
        raise NotFound(f"no policy {name} (now or before)")
    return changes


def _get(row: PolicyRow | None, name: str) -> PolicyRecord:
    if row is None:
        raise NotFound(f"no policy {name}")
    return PolicyRecord.of(row)


def load_policy_file(path: Path) -> list[Policy]:
    """The policies of a TOML file (``[[policy]]`` tables); :class:`UsageError` for a file
    that is not TOML, a duplicate name or an invalid policy."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(doc) - {"policy"})
    if unknown:
        raise UsageError(f"{path}: unknown top-level key(s) {', '.join(unknown)}")
    tables = doc.get("policy", [])
    if not isinstance(tables, list):
        raise UsageError(f"{path}: write policies as [[policy]] tables")
    policies = [Policy.from_dict(t) for t in tables]
    names = [p.name for p in policies]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"{path}: policy name(s) given twice: {', '.join(dupes)}")
    return policies


def _diff(old: Policy | None, new: Policy | None) -> PolicyDiff:
    if old is None:
        assert new is not None  # noqa: S101 - one of the two is always given
        return PolicyDiff(new.name, "add")
    if new is None:
        return PolicyDiff(old.name, "remove")
    a, b = old.to_dict(), new.to_dict()
    changes = tuple(FieldChange(k, a[k], b[k]) for k in a if a[k] != b[k])
    return PolicyDiff(old.name, "edit" if changes else "same", changes)


def apply_policies(
    ctx: Context, specs: Sequence[Policy], dry_run: bool = False, who: str = "apply"
) -> ApplyReport:
    """Make the stored policies exactly ``specs`` (in one transaction); the report lists the
    difference (computed before anything changes; with ``dry_run`` nothing does)."""
    wanted = {p.name: p for p in specs}
    with catalog(ctx) as r, r.index.writing():
        current = {row.name: PolicyRecord.of(row).policy for row in r.index.policies()}
        diffs = tuple(
            _diff(current.get(n), wanted.get(n)) for n in sorted(current.keys() | wanted.keys())
        )
        if not dry_run:
            now = _now()
            for d in diffs:
                if d.action in ("add", "edit"):
                    r.index.put_policy(d.name, wanted[d.name].to_dict(), now, who)
                elif d.action == "remove":
                    r.index.delete_policy(d.name, now, who)
    return ApplyReport(dry_run, diffs)


def run_policy_now(ctx: Context, name: str, who: str = "cli") -> JobRecord:
    """Queue a manual run of ``name``: a daemon in this process is woken at once, one in
    another process sees the queued job within about a second (one run of a policy at a
    time: a run already queued or running is returned instead)."""
    from vmaccel.service.jobbook import queue_run

    with catalog(ctx) as r:
        _get(r.index.policy(name), name)
        return queue_run(r.index, name, "manual", None)[0]


@dataclass(frozen=True)
class PolicyTest:
    """What a run of ``policy`` would do now: per VM and disk, plus notes on VMs left out."""

    policy: str
    vms: tuple[VmPlan, ...]
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "vms": [v.to_dict() for v in self.vms],
                "notes": list(self.notes)}  # fmt: skip

    def summary(self) -> list[str]:
        lines = [f"policy {self.policy}: {len(self.vms)} VM(s)"]
        for v in self.vms:
            lines.append(f"  {v.vm}")
            lines += [f"    {d.label or d.disk}: {d.mode} ({d.reason})" for d in v.disks]
            lines += [f"    note: {n}" for n in v.notes]
        lines += [f"  note: {n}" for n in self.notes]
        return lines


def test_policy(ctx: Context, name: str) -> PolicyTest:
    """Resolve the selection live (tags, folders, names) and say per VM and disk whether a run
    now would read it full, incrementally or as a rescan, and why. Changes nothing."""
    from vmaccel.service.policyplan import plan_vm, rescan_due
    from vmaccel.service.policyrun import PolicySession

    policy = get_policy(ctx, name).policy
    with PolicySession(ctx, policy, Cancel(), lease=False) as session:
        vms, notes = session.select()
        repo = session.repo
        assert repo is not None  # noqa: S101 - open inside the session
        now = _now()
        plans = tuple(
            plan_vm(repo, vm, policy.exclude_disks, rescan_due(repo, vm.name,
                    policy.rescan_days, now))
            for vm in vms
        )  # fmt: skip
    return PolicyTest(name, plans, tuple(notes))

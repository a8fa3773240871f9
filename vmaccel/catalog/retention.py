"""Retention: which backups a policy keeps. Pure: plain rows in, a decision out, no I/O.

Semantics (restic's, which borg shares for these rules), applied to each VM on its own:

* backups are ordered newest first by start time (UNIX seconds; ties broken by id, so the
  result does not depend on the input order);
* ``last`` keeps the ``last`` newest backups;
* each period rule (``hourly``, ``daily``, ``weekly``, ``monthly``, ``yearly``) keeps the newest
  backup of each of the newest N distinct periods *that contain backups* (periods in UTC;
  weeks are ISO weeks). Empty periods do not count, so a VM backed up weekly keeps
  ``daily=7`` backups spread over seven weeks;
* the rules are independent: the keep set is the union of what every rule keeps, and a kept
  backup lists every rule that keeps it (its ``reasons``);
* a backup whose anomaly verdict is suspicious and not acknowledged (``BackupMeta.protected``)
  is always kept, with reason :data:`PROTECTED`, and counts for the rules as any other.

A policy that keeps nothing is refused (:class:`UsageError`) unless built with
``allow_empty=True``: deleting every backup must never happen by accident.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime

from vmaccel.catalog.index import BackupRow
from vmaccel.vocabulary.errors import UsageError

logger = logging.getLogger(__name__)

PeriodKey = Callable[[datetime], str]

# Each period rule maps a UTC time to a label; two backups share a period iff labels match.
PERIODS: dict[str, PeriodKey] = {
    "hourly": lambda t: t.strftime("%Y-%m-%d %H:00"),
    "daily": lambda t: t.strftime("%Y-%m-%d"),
    "weekly": lambda t: "{:04d}-W{:02d}".format(*t.isocalendar()[:2]),
    "monthly": lambda t: t.strftime("%Y-%m"),
    "yearly": lambda t: t.strftime("%Y"),
}


@dataclass(frozen=True)
class RetentionPolicy:
    """How many backups (``last``) and periods (the others) to keep, per VM. Counts >= 0."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    allow_empty: bool = False

    def __post_init__(self) -> None:
        for name, count in self.counts().items():
            if not isinstance(count, int) or count < 0:
                raise UsageError(f"keep-{name} must be a whole number >= 0, not {count!r}")
        if self.keeps_nothing and not self.allow_empty:
            raise UsageError(
                "this retention policy keeps no backup at all; give at least one --keep-* rule"
            )

    def counts(self) -> dict[str, int]:
        """Rule name -> count, in rule order (``last`` first)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "allow_empty"}

    @property
    def keeps_nothing(self) -> bool:
        return not any(self.counts().values())

    def describe(self) -> str:
        kept = [f"{name} {n}" for name, n in self.counts().items() if n]
        return ", ".join(kept) if kept else "keep nothing"


@dataclass(frozen=True)
class RetentionDecision:
    """What a policy does to a set of backups. Both tuples are newest first.

    ``keep`` pairs each kept backup with its reasons (``"last"``, ``"daily 2024-05-01"``...).
    Every input backup is in exactly one of ``keep`` and ``remove``.
    """

    keep: tuple[tuple[BackupRow, tuple[str, ...]], ...]
    remove: tuple[BackupRow, ...]


PROTECTED = "suspicious, not acknowledged (vmaccel backups ack ID)"


def newest_first(backups: Sequence[BackupRow]) -> list[BackupRow]:
    """Backups newest first by start time; ties by id (higher id is newer)."""
    return sorted(backups, key=lambda b: (b.started, b.id), reverse=True)


def select(
    backups: Sequence[BackupRow], policy: RetentionPolicy, now: float | None = None
) -> RetentionDecision:
    """Apply ``policy`` to ``backups`` of any number of VMs (each VM judged on its own).

    ``now`` (UNIX seconds), when given, protects backups that started after it (a clock that
    was ahead): they are kept with reason ``"future"`` and count for no rule. The caller passes
    only complete backups.
    """
    by_vm: dict[str, list[BackupRow]] = {}
    for b in backups:
        by_vm.setdefault(b.vm, []).append(b)
    reasons: dict[int, list[str]] = {}
    for vm_backups in by_vm.values():
        _select_vm(newest_first(vm_backups), policy, now, reasons)
    ordered = newest_first(backups)
    keep = tuple((b, tuple(reasons[b.id])) for b in ordered if b.id in reasons)
    remove = tuple(b for b in ordered if b.id not in reasons)
    return RetentionDecision(keep, remove)


def _select_vm(
    ordered: list[BackupRow],
    policy: RetentionPolicy,
    now: float | None,
    reasons: dict[int, list[str]],
) -> None:
    """Add the reasons for keeping each of one VM's backups (``ordered`` newest first)."""
    judged = []
    for b in ordered:
        if b.meta.protected:
            reasons.setdefault(b.id, []).append(PROTECTED)
        if now is not None and b.started > now:
            reasons.setdefault(b.id, []).append("future")
        else:
            judged.append(b)
    for b in judged[: policy.last]:
        reasons.setdefault(b.id, []).append("last")
    for rule, key in PERIODS.items():
        count = getattr(policy, rule)
        last_label: str | None = None
        for b in judged:
            if count <= 0:
                break
            label = key(datetime.fromtimestamp(b.started, UTC))
            if label != last_label:
                last_label = label
                reasons.setdefault(b.id, []).append(f"{rule} {label}")
                count -= 1

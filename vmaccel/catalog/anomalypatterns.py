"""Accepted patterns of the anomaly verdict: what ``backups ack --pattern`` said is normal for
a VM, and the rule that decides whether a later finding is covered by one.

A pattern is the findings that fired on one backup (every disk's, by disk), recorded for its
VM. A later finding of that VM is covered when some pattern holds a finding of the same disk,
volume and kind whose figure, times ``Thresholds.pattern_tolerance``, is at least the new
figure (figures grow with severity: :class:`~vmaccel.catalog.anomalyfindings.Finding`), and,
for new extensions and ransom-note names, whose names include every new name. So an OS
upgrade acked once (many files modified, ``.rpm`` files appearing) covers the next upgrade of
similar size; a later day on which files are renamed to ``.locked`` or random data fills the
new blocks fires on findings no pattern holds and is judged as before.

Pure: the patterns come from the index (:mod:`vmaccel.catalog.index.patterns`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vmaccel.catalog.anomalyfindings import Acceptor, Finding
from vmaccel.vocabulary.errors import IndexCorrupt

_NAMED = frozenset({"new_extensions", "ransom_notes"})  # kinds matched by their names too


@dataclass(frozen=True)
class PatternFinding:
    """One finding of an accepted pattern, and the disk it fired on."""

    disk: str
    finding: Finding

    def to_json(self) -> dict[str, Any]:
        return {"disk": self.disk, **self.finding.to_json()}


@dataclass(frozen=True)
class AcceptedPattern:
    """One accepted pattern of ``vm``, taken from backup ``backup_id`` at ``created`` (UNIX
    seconds, UTC)."""

    id: int
    vm: str
    backup_id: int
    created: float
    findings: tuple[PatternFinding, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "vm": self.vm,
            "backup_id": self.backup_id,
            "created": self.created,
            "findings": [f.to_json() for f in self.findings],
        }


def encode_findings(findings: Sequence[PatternFinding]) -> str:
    """The stored form of a pattern's findings (JSON)."""
    return json.dumps([f.to_json() for f in findings], sort_keys=True)


def decode_findings(text: str) -> tuple[PatternFinding, ...]:
    """The findings :func:`encode_findings` stored; raises :class:`IndexCorrupt` for
    anything else."""
    try:
        raw = json.loads(text)
        if not isinstance(raw, list):
            raise TypeError(raw)
        return tuple(PatternFinding(str(r["disk"]), Finding.from_json(r)) for r in raw)
    except (ValueError, TypeError, KeyError) as exc:
        raise IndexCorrupt(f"an accepted anomaly pattern is unreadable: {exc}") from None


def covers(accepted: Finding, found: Finding, tolerance: float) -> bool:
    """Whether ``accepted`` (of the same disk) covers ``found``: same kind and volume, a
    figure at most ``tolerance`` times the accepted one, and no name the accepted one lacks."""
    if (accepted.kind, accepted.volume) != (found.kind, found.volume):
        return False
    if found.value > accepted.value * tolerance:
        return False
    return found.kind not in _NAMED or set(found.names) <= set(accepted.names)


def acceptor(patterns: Sequence[AcceptedPattern], tolerance: float) -> Acceptor:
    """The :data:`Acceptor` of ``patterns``: the id of the first (oldest) pattern that
    covers a finding of a disk, or None."""

    def accept(disk: str, found: Finding) -> int | None:
        for p in patterns:
            if any(pf.disk == disk and covers(pf.finding, found, tolerance) for pf in p.findings):
                return p.id
        return None

    return accept

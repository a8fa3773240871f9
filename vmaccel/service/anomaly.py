"""The anomaly verdict's settings: the effective thresholds of a repository (and VM), and the
accepted patterns (``backups ack --pattern``, ``backups patterns``, ``backups forget-pattern``).

Thresholds come from the repository's ``anomaly.toml`` (:mod:`vmaccel.catalog.anomalyconfig`);
patterns live in the catalog index (:mod:`vmaccel.catalog.anomalypatterns`). Both apply to
the verdicts of backups taken afterwards; stored verdicts are never recomputed.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import asdict, dataclass
from typing import Any

from vmaccel.catalog.anomaly import Thresholds
from vmaccel.catalog.anomalyconfig import load_thresholds, overrides, thresholds_file
from vmaccel.catalog.anomalypatterns import AcceptedPattern, PatternFinding, encode_findings
from vmaccel.catalog.index import BackupRow
from vmaccel.catalog.repository import Repository
from vmaccel.plugin.engine.verdict import accepted_patterns
from vmaccel.service.context import Context
from vmaccel.vocabulary.errors import NotFound, UsageError


@dataclass(frozen=True)
class EffectiveThresholds:
    """The thresholds a verdict of ``vm`` (of any VM when None) uses, the file they come from
    (``exists`` False: the built-in defaults) and the ``[vm."PATTERN"]`` tables that apply."""

    thresholds: Thresholds
    file: str
    exists: bool
    vm: str | None
    overrides: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self.thresholds)
        values["ransom_notes"] = sorted(self.thresholds.ransom_notes)
        return {
            "file": self.file,
            "exists": self.exists,
            "vm": self.vm,
            "overrides": list(self.overrides),
            "thresholds": values,
        }


def effective_thresholds(ctx: Context, vm: str | None = None) -> EffectiveThresholds:
    """The thresholds of ``vm`` in the context's repository; UsageError for a malformed
    ``anomaly.toml``."""
    path = thresholds_file(ctx.require_repo())
    t = load_thresholds(ctx.require_repo(), vm)
    matched: list[str] = []
    if vm is not None and path.exists():
        matched = overrides(tomllib.loads(path.read_text(encoding="utf-8")), vm)
    return EffectiveThresholds(t, str(path), path.exists(), vm, tuple(matched))


def accept_pattern(r: Repository, b: BackupRow) -> AcceptedPattern:
    """Record the findings of ``b``'s verdict that count towards its level as an accepted
    pattern of its VM (the backup's existing pattern when there is one). UsageError when the
    verdict has no such finding (nothing fired, or a verdict from before findings were kept)."""
    existing = [p for p in accepted_patterns(r, b.vm) if p.backup_id == b.id]
    if existing:
        return existing[0]
    verdict = b.meta.verdict
    found = tuple(
        PatternFinding(d.disk, f)
        for d in (verdict.disks if verdict is not None else ())
        for f in d.findings
        if f.pattern is None
    )
    if not found:
        raise UsageError(
            f"backup {b.id} of {b.vm}: its verdict has no finding to accept as a pattern"
        )
    now = time.time()
    with r.index.writing():
        pattern_id = r.index.add_pattern(b.vm, b.id, now, encode_findings(found))
    return AcceptedPattern(pattern_id, b.vm, b.id, now, found)


def list_patterns(ctx: Context, vm: str | None = None) -> list[AcceptedPattern]:
    """The accepted patterns (of ``vm``, or every VM's), oldest first."""
    with ctx.open() as r:
        if vm is not None:
            return accepted_patterns(r, vm)
        vms = sorted({p.vm for p in r.index.patterns()})
        return sorted((p for v in vms for p in accepted_patterns(r, v)), key=lambda p: p.id)


def forget_pattern(ctx: Context, pattern_id: int) -> None:
    """Forget an accepted pattern: its findings raise later verdicts again. NotFound when
    there is no pattern with that id."""
    with ctx.open(lease="backup") as r:
        with r.index.writing():
            gone = r.index.delete_pattern(pattern_id)
        if not gone:
            raise NotFound(f"no accepted anomaly pattern {pattern_id} in {r.path}")

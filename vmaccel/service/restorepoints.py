"""VMs and their restore points, filtered and paged: what a console or a script lists.

The same backups as :func:`vmaccel.service.backups.list_backups` (complete ones; ``clean``
as ``backups list --clean``), but a page at a time: the list is counted and sliced from
the index's backup heads (id, VM, start time), and only the page's backups have their
metadata and images read. Filters on the anomaly verdict (``clean``, ``verdict``) need every
backup's metadata and cost a read of all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmaccel.catalog.index import BackupRow
from vmaccel.service.backups import BackupDetail, clean_points
from vmaccel.service.context import Context
from vmaccel.vocabulary.backupref import dir_time
from vmaccel.vocabulary.errors import UsageError

MAX_LIMIT = 1000  # backups per page at most
_HEAVY = frozenset({"config_xml"})  # metadata a list leaves out


@dataclass(frozen=True)
class BackupQuery:
    """Which backups: of ``vm`` (or all); ``clean`` ones only; started in
    [``since``, ``until``) (UNIX seconds); with verdict ``verdict`` (``ok``, ``suspicious``,
    ... or ``none`` for backups without one); newest first unless ``newest_first`` is
    false; ``limit`` (1..MAX_LIMIT) of them from ``offset`` (0-based)."""

    vm: str | None = None
    clean: bool = False
    since: float | None = None
    until: float | None = None
    verdict: str | None = None
    newest_first: bool = True
    offset: int = 0
    limit: int = 100


@dataclass(frozen=True)
class BackupPage:
    """One page of backups; ``total`` counts every backup the query matches. Items are
    ``backups show --json`` documents without ``meta.config_xml`` (the saved VM
    configuration, kilobytes each, is for restores: ``show_backup`` has it)."""

    total: int
    offset: int
    limit: int
    items: tuple[BackupDetail, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "offset": self.offset,
            "limit": self.limit,
            "items": [_listed(b) for b in self.items],
        }


def _listed(b: BackupDetail) -> dict[str, Any]:
    doc = b.to_dict()
    doc["meta"] = {k: v for k, v in doc["meta"].items() if k not in _HEAVY}
    return doc


@dataclass(frozen=True)
class VmSummary:
    """One VM that has complete backups: how many, the oldest and newest start times (UNIX
    seconds), the newest backup's id and its verdict level (None before verdicts existed)."""

    vm: str
    restore_points: int
    first: float
    latest: float
    latest_id: int
    latest_verdict: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "restore_points": self.restore_points,
            "first": self.first,
            "latest": self.latest,
            "latest_time": dir_time(self.latest),
            "latest_id": self.latest_id,
            "latest_verdict": self.latest_verdict,
        }


def page_backups(ctx: Context, query: BackupQuery) -> BackupPage:
    """The page of complete backups ``query`` selects. Raises :class:`UsageError` for a
    negative offset or a limit outside 1..MAX_LIMIT."""
    if query.offset < 0 or not 1 <= query.limit <= MAX_LIMIT:
        raise UsageError(f"offset must be >= 0 and limit within 1..{MAX_LIMIT}")
    with ctx.open() as r:
        if query.clean or query.verdict is not None:
            rows = _by_verdict(r.backups(query.vm), query)
            if query.newest_first:
                rows.reverse()
            total, page = len(rows), rows[query.offset : query.offset + query.limit]
        else:
            total, page = r.index.backup_page(
                query.vm, query.since, query.until, query.newest_first, query.offset, query.limit
            )
        items = tuple(BackupDetail(b, tuple(r.images(b))) for b in page)
    return BackupPage(total, query.offset, query.limit, items)


def list_vms(ctx: Context) -> list[VmSummary]:
    """Every VM with complete backups, by name (one metadata read per VM: its newest)."""
    with ctx.open() as r:
        out = []
        for vm, count, first, latest, latest_id in r.index.vm_backup_spans():
            newest = r.backup(latest_id)
            verdict = newest.meta.verdict if newest is not None else None
            level = verdict.level if verdict is not None else None
            out.append(VmSummary(vm, count, first, latest, latest_id, level))
    return out


def _in_time(b: BackupRow, q: BackupQuery) -> bool:
    return (q.since is None or b.started >= q.since) and (q.until is None or b.started < q.until)


def _by_verdict(found: list[BackupRow], q: BackupQuery) -> list[BackupRow]:
    """``found`` (oldest first) narrowed by all of ``q``'s filters, still oldest first."""
    if q.clean:
        found = clean_points(found)
    out = []
    for b in found:
        level = b.meta.verdict.level if b.meta.verdict is not None else "none"
        if _in_time(b, q) and (q.verdict is None or level == q.verdict):
            out.append(b)
    return out

"""Keeping a repository healthy: verify, prune (retention), gc (space).

The catalog modules behind each verb load with it, so other use cases skip their import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmaccel.service.context import Context

if TYPE_CHECKING:
    from vmaccel.catalog.gc import GcReport
    from vmaccel.catalog.prune import PruneReport
    from vmaccel.catalog.retention import RetentionPolicy
    from vmaccel.catalog.verify import VerifyReport


def verify(ctx: Context, full: bool = False) -> VerifyReport:
    """Check the repository (``full``: re-read and re-hash every chunk); ``ok`` is false and
    the report names what is damaged when anything is."""
    from vmaccel.catalog.verify import verify as verify_repository

    with ctx.open() as r:
        return verify_repository(r, full=full)


def retention(
    last: int = 0,
    hourly: int = 0,
    daily: int = 0,
    weekly: int = 0,
    monthly: int = 0,
    yearly: int = 0,
) -> RetentionPolicy:
    """A GFS retention policy: how many restore points of each kind to keep per VM."""
    from vmaccel.catalog.retention import RetentionPolicy

    return RetentionPolicy(
        last=last, hourly=hourly, daily=daily, weekly=weekly, monthly=monthly, yearly=yearly
    )


def prune(ctx: Context, policy: RetentionPolicy, dry_run: bool = False) -> PruneReport:
    """Remove the backups (metadata only) that no rule of ``policy`` keeps, per VM."""
    from vmaccel.catalog.prune import prune as prune_backups

    with ctx.open(write=True) as r:
        return prune_backups(r, policy, dry_run=dry_run)


def gc(ctx: Context, grace_seconds: float = 3600.0, dry_run: bool = False) -> GcReport:
    """Delete chunks no backup references and repack mostly-dead packs. ``space_needed`` in
    the report is non-zero when some packs could not be repacked for lack of free space."""
    from vmaccel.catalog.gc import collect_garbage

    with ctx.open(write=True, use_reserve=not dry_run) as r:
        return collect_garbage(r, grace_seconds=grace_seconds, dry_run=dry_run)

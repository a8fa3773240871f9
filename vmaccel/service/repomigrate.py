"""Moving a repository to S3 and PostgreSQL: the use case behind ``vmaccel repo migrate``.

The mechanism (locks, order, what an interruption leaves) is
:mod:`vmaccel.catalog.migrate`; this layer takes the source from the context and the
target as the application built it."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

from vmaccel.catalog.migrate import MigrationReport, MigrationTarget, Tracker, migrate
from vmaccel.service.context import Context

__all__ = ["MigrationReport", "MigrationTarget", "migrate_repository"]


def migrate_repository(
    ctx: Context,
    target: MigrationTarget,
    track: Tracker | None = None,
    also_hold: AbstractContextManager[Any] | None = None,
) -> MigrationReport:
    """Copy the context's repository (never changed) to ``target``, a new directory with its
    objects in S3 and its catalog in PostgreSQL, waiting ``ctx.lock_wait`` seconds for the
    source's locks; ``track(label, total bytes)`` draws the progress of the objects;
    ``also_hold`` is a lock of the application's to hold on the source meanwhile (its
    daemon lock: no daemon writes policy or job rows during the copy). When this returns,
    the new repository is complete and durable."""
    where = replace(target, path=target.path.absolute())
    return migrate(ctx.require_repo(), where, ctx.lock_wait, track, also_hold)

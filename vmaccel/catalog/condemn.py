"""Condemned chunks: how gc decides which dead chunks it may delete while backups run.

Backups write under leases (catalog.lease), beside gc. A chunk no complete backup references
may still be about to be referenced by a running backup that looked it up (dedup) or reads
it (its parent's map). So gc does not delete such a chunk at once; it *condemns* it
(``chunk.condemned = M``, M the highest lease id issued when the condemning transaction
commits). From then on dedup lookups do not see it, so a writer whose lease is newer than M
never references it (when it stores the same content again, its pack resurrects the row:
catalog.index.chunks); readers still see it.

When its mark starts, gc records M0, the highest lease id issued, and L0, the ids of the live
leases (:class:`~vmaccel.catalog.lease.LeaseSurvey`). A chunk condemned with M_C may be
deleted by this gc iff this gc's mark found it unreferenced, M_C <= M0, and no lease in L0
has an id <= M_C (:func:`may_delete`): every writer that could have looked it up before it
was hidden had ended before the mark began, so the mark saw whatever it committed. With no
writer at all, what this gc condemns satisfies this at once (M_C = M0, L0 empty): a quiet gc
deletes in one run. A condemned chunk the mark finds referenced again is absolved.

That rule alone has a hole: a later writer reaches chunks not only by dedup lookups but also
through its parents' maps, which it reuses without looking their chunks up. If a complete
backup P referenced a chunk condemned before a writer B's lease, B could take it over from P;
with P pruned during B's run, a gc with only B live would delete it. So vmaccel keeps one
more invariant: **no complete backup references a condemned chunk.** Two things keep it:

* a backup's commit transaction absolves every chunk condemned with a value >= its lease id
  (all it can have referenced: anything condemned before its lease it could only reach
  through a complete backup, which by the invariant references none); absolving more is
  harmless, the next gc condemns them again;
* gc's condemning transaction first marks the backups that became complete since its mark
  began (inside the transaction no backup can complete) and condemns none of their chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmaccel.catalog.lease import LeaseSurvey

if TYPE_CHECKING:
    from vmaccel.catalog.index import CatalogIndex


@dataclass(frozen=True)
class Verdict:
    """What gc may do with the dead chunks of one run: ``deletable`` (condemned, and
    :func:`may_delete` holds) and ``waiting`` (condemned, kept for now); ``condemned`` is
    how many were newly condemned, ``absolved`` how many were found referenced again;
    ``late_live`` the chunks of backups that completed while the mark ran (live too)."""

    deletable: frozenset[bytes]
    waiting: frozenset[bytes]
    condemned: int
    absolved: int
    late_live: frozenset[bytes] = frozenset()


def may_delete(mark: int, start: LeaseSurvey) -> bool:
    """Whether a chunk condemned with ``mark`` may be deleted by a gc whose mark began at
    ``start`` (see the module docstring)."""
    return mark <= start.last_id and not any(i <= mark for i in start.live_ids)


def judge(
    index: CatalogIndex,
    live: set[bytes],
    dead: Iterable[bytes],
    start: LeaseSurvey,
    late: Callable[[], set[bytes]],
    dry_run: bool,
) -> Verdict:
    """Condemn the ``dead`` chunks not condemned yet and absolve condemned live ones, in one
    transaction (none with ``dry_run``: then the verdict is what that transaction would
    give); split every dead chunk into deletable and waiting. ``late`` returns the chunks of
    the backups completed since the mark began; it runs inside the transaction."""
    dead = list(dead)
    if dry_run:
        mark, late_live = index.last_lease_id(), late()
        marks = index.condemned_chunks()
        condemned = len([c for c in dead if c not in marks and c not in late_live])
        absolved = len([c for c in marks if c in live or c in late_live])
    else:
        with index.writing():
            mark = index.last_lease_id()  # inside: the highest issued when this commits
            late_live = late()  # no backup completes while this transaction is open
            marks = index.condemned_chunks()
            absolve = [c for c in marks if c in live or c in late_live]
            index.absolve_chunks(absolve)
            new = [c for c in dead if c not in marks and c not in late_live]
            condemned, absolved = index.condemn_chunks(new, mark), len(absolve)
    values = {c: m for c, m in marks.items() if c not in live and c not in late_live}
    values.update((c, mark) for c in dead if c not in marks and c not in late_live)
    deletable = frozenset(c for c, m in values.items() if may_delete(m, start))
    return Verdict(
        deletable, frozenset(values) - deletable, condemned, absolved, frozenset(late_live)
    )

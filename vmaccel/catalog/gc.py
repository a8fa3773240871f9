"""``gc``: delete what no complete backup references (mark and sweep), and repack.

Run under the maintenance lock (the caller opens the repository with ``write=True``), so no
prune, rebuild-index or other gc runs; backups may (they hold writer leases, catalog.lease).
gc never deletes a chunk a running or later backup will reference (DESIGN invariant 2): dead
chunks are first *condemned*, hidden from dedup, and deleted only once no writer that could
have looked them up before is running (catalog.condemn has the rule). Without leases, what one
gc condemns it deletes in the same run, as if no leases existed.

0. **Refuse on an incomplete index** (before anything changes): a manifest in ``backups/``
   with no backup row, or a chunk the maps of complete backups name with no chunk row, means
   the index lost what the packs still hold (deleted, emptied, replaced); deleting
   "unreferenced" packs then would delete backups. Run ``repo rebuild-index`` first.
1. **Leases, then mark.** gc surveys the leases (clearing stale ones: writers killed with
   their lease), recording M0 and L0, and only then marks: every map node of every image of
   every complete backup, and every data chunk named by their leaves, is live. Map walks
   share one ``seen`` set, so subtrees shared between synthetic fulls are walked once. A
   damaged map stops gc before it deletes anything (what lies below a damaged node is
   unknown, hence possibly live).
2. **Condemn.** Dead chunks of packs older than the grace period are condemned; condemned
   chunks found live again are absolved; condemned chunks the rule allows are deletable, the
   others wait (their packs are left alone this run: neither deleted nor repacked).
   **Unfinished backups.** Backups not ``complete`` (``in_progress``/``failed`` from a killed
   or aborted writer, ``deleting`` from an interrupted prune) are removed like prune removes
   them (state ``deleting`` -> manifest -> rows) -- but only while no lease is live: a
   running backup's row is ``in_progress`` too. The leases are looked at again after the
   rows are listed, so a backup that started during gc keeps its row and its files.
3. **Sweep** (DESIGN invariant 2), in the order that needs the least free space, so that gc
   makes progress on a full disk: release the repository's space reserve (SQLite needs room
   for its WAL; see catalog.repository), delete temporary files, then packs left
   ``deleting`` and orphans, then whole dead packs in batches sized to the free space, and
   only then repack, smallest-live first, into the space that freed (catalog.repack; when
   even the smallest repack does not fit, the report says how many bytes it needs). Packs
   created less than ``grace_seconds`` ago are left alone, live or not; a pack with no live
   chunk is deleted, one whose dead file bytes exceed ``repack_threshold`` of its size is
   repacked, and so are the packs with the largest dead share after them until the dead
   bytes left in packs are at most ``max_unused`` of the pack bytes that stay (a per-pack
   rule alone lets dead space pile up to its share in every pack: a 60-day daily history
   took 1.18x its unique data with the 0.5 rule alone, 1.06x with 5 %). Write orders:

   * delete: one transaction deletes the pack's chunk rows (each only if still condemned and
     still in that pack: a resurrection racing gc wins) and marks it ``deleting`` only if no
     row names it any more -> pack row deleted -> file deleted;
   * repack: new pack durable (fsync) -> one transaction adds its row, moves the live chunk
     rows to it (each only if still in its old pack), deletes the old pack's dead chunk rows
     (conditionally, as above) and marks the old pack ``deleting`` if no row names it
     -> old pack row deleted -> old file deleted.

   The row goes before the file so that a crash in between leaves an orphan file (garbage,
   which the next gc deletes) rather than a row naming a missing file (which verify rightly
   calls damage). Orphan pack files (no row: also sealed by a writer killed before its rows
   committed) and temporary packs (uploads never committed: ``packs/tmp`` in a directory
   store) older than the grace period are deleted too, but only while no lease is live (a
   running writer's sealed pack has no row until its transaction commits).
4. **Pack files** (of ``deleting`` packs and orphans) are deleted only while gc holds
   ``readers.lock`` exclusively: a reader that looked a chunk up before its row moved may
   still be about to read the old file. Backups share ``readers.lock`` too (they read their
   parents' maps), so beside a backup these packs stay pending. If a reader is active they
   stay (the report names the pending packs and their bytes), gc does not repack (new packs
   could not replace the old ones, the repository would only grow) and the next gc finishes
   the job. Temporary files were never named anywhere and are deleted when no writer runs.

Every step is crash safe: a killed gc leaves at worst ``deleting`` rows, orphan files or
temporary files, each of which the next gc finishes.

Memory: the live set holds every live chunk id in a Python set (about 100 bytes per unique
chunk: ~1.6 GB for 16 million 64 KiB chunks, i.e. 1 TiB of unique data). A SQLite temporary
table of live ids would bound this; it is the way to go when repositories outgrow RAM.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from vmaccel.catalog.blockmap import HOLE
from vmaccel.catalog.condemn import Verdict, judge
from vmaccel.catalog.gcreport import GcReport
from vmaccel.catalog.index import ChunkLocation, PackRow
from vmaccel.catalog.lease import survey
from vmaccel.catalog.prune import remove_backup
from vmaccel.catalog.repack import (
    INDEX_BASE,
    INDEX_PER_CHUNK,
    PackPlan,
    Repacker,
    RepackResult,
    repack_order,
    space_for,
)
from vmaccel.catalog.reserve import clear_reserve_temps
from vmaccel.vocabulary.errors import ChunkMissing, DamageError, IndexCorrupt, UsageError

if TYPE_CHECKING:
    from vmaccel.catalog.index import BackupRow
    from vmaccel.catalog.repository import Repository

logger = logging.getLogger(__name__)

_REBUILD_FIRST = "run `vmaccel repo rebuild-index` first"
__all__ = ["GcReport", "collect_garbage", "mark"]


def collect_garbage(
    repo: Repository,
    grace_seconds: float = 3600,
    dry_run: bool = False,
    repack_threshold: float = 0.5,
    max_unused: float = 0.05,
) -> GcReport:
    """Mark and sweep ``repo`` (see the module docstring). Needs the writer lock.

    ``grace_seconds``: packs (and stray files) younger than this are never touched.
    ``repack_threshold``: repack a pack once more than this fraction of its file bytes is dead.
    ``max_unused``: then repack the most-dead packs until at most this fraction of the pack
    bytes left after repacking is dead (packs younger than the grace period count as they are).
    Raises :class:`IndexCorrupt` before changing anything when the index lacks what the
    manifests and maps name (see :func:`check_index_complete`), and
    :class:`~vmaccel.vocabulary.errors.NoSpaceLeft` when the disk filled up under a repack
    (consistent). Returns after everything reported as done is durable.
    """
    if not repo.maintenance:
        raise UsageError("gc needs the repository opened for writing (maintenance: write=True)")
    if grace_seconds < 0 or not 0 <= repack_threshold < 1 or not 0 <= max_unused < 1:
        raise UsageError("gc needs a grace period >= 0 and a repack threshold in [0, 1)")
    now = time.time()
    check_manifests_indexed(repo)
    start = survey(repo.index, repo.path)  # M0 and L0: before the mark begins
    marked = repo.backups(state="complete")
    live = mark(repo, marked)
    check_live_indexed(repo, live)
    older_than = now - grace_seconds
    old, young, young_bytes = _old_packs(repo, older_than)
    dead = (c.id for _, chunks in old for c in chunks if c.id not in live)

    def late() -> set[bytes]:  # backups that completed while the mark ran
        ids = {b.id for b in marked}
        return mark(repo, [b for b in repo.backups(state="complete") if b.id not in ids])

    verdict = judge(repo.index, live, dead, start, late, dry_run)
    live |= verdict.late_live
    doomed, repack, held = _plan(old, young_bytes, live, verdict, repack_threshold, max_unused)
    counts = _sweep(repo, older_than, doomed, repack, bool(start.live), dry_run)
    locked = (0, 0) if dry_run else repo.store.expire_deletes()  # Object Lock: catalog.s3lock
    report = GcReport(
        dry_run, grace_seconds, live_chunks=len(live), packs_young=young,
        leases_live=len(start.live), leases_cleared=start.cleared,
        chunks_condemned=verdict.condemned, packs_held=len(held),
        chunks_waiting=sum(1 for _, cs in held for c in cs if c.id in verdict.waiting),
        locked_deleted=locked[0], locked_waiting=locked[1], **counts,
    )  # fmt: skip
    logger.info("gc: %s", "; ".join(report.summary()))
    return report


def _sweep(
    repo: Repository,
    older_than: float,
    doomed: list[PackPlan],
    repack: list[PackPlan],
    writers: bool,
    dry_run: bool,
) -> dict[str, Any]:
    """Run (or with ``dry_run`` estimate) the sweep; ``writers``: a lease was live when the
    mark began. The unfinished backups are listed before a second look at the leases: when
    none is live then, every writer of those rows has ended; files younger than that look
    may be a new writer's, so only older strays count."""
    unfinished = [b for b in repo.backups(state=None) if b.state != "complete"]
    quiet_since = time.time()
    writers = writers or bool(survey(repo.index, repo.path).live)
    strays_before = min(older_than, quiet_since)
    if dry_run:
        return _estimate(repo, strays_before, unfinished, doomed, repack, writers)
    return _Sweep(repo, strays_before, writers).run(unfinished, doomed, repack)


def check_manifests_indexed(repo: Repository) -> None:
    """Refuse when a manifest in ``backups/`` names a backup the index has no row for: its
    chunks would look like garbage (the index was lost or replaced; rebuild-index restores
    it). Cost: one directory listing and one query."""
    rows = {b.uuid for b in repo.backups(state=None)}
    lost = [n for n in repo.manifest_names() if n not in rows]
    if lost:
        raise IndexCorrupt(
            f"gc refuses to run: {len(lost)} backup manifest(s) in {repo.path / 'backups'} "
            f"have no row in the index (first: {lost[0]}), so their data would be taken for "
            f"garbage; {_REBUILD_FIRST}"
        )


def check_live_indexed(repo: Repository, live: set[bytes]) -> None:
    """Refuse when chunks the maps of complete backups name have no index row (one scan)."""
    missing = repo.index.missing_chunks(live)
    if missing:
        first = min(missing).hex()
        raise IndexCorrupt(
            f"gc refuses to run: {len(missing)} chunk(s) that complete backups use are not in "
            f"the index (first: {first}); a pack may still hold them: {_REBUILD_FIRST} (if "
            "`vmaccel verify` still reports them missing afterwards, prune the backups it names)"
        )


def mark(repo: Repository, backups: list[BackupRow] | None = None) -> set[bytes]:
    """Ids of every chunk (map nodes and data) reachable from the images of ``backups``
    (default: every complete backup).

    Raises a :class:`DamageError` naming the image whose map cannot be walked.
    """
    nodes: set[bytes] = set()  # also the walk's seen set: shared subtrees are walked once
    data: set[bytes] = set()
    for backup in repo.backups(state="complete") if backups is None else backups:
        for img in repo.images(backup):
            try:
                for node_id, level in repo.blockmap.iter_nodes(repo.map_root(img), nodes):
                    if level == 0:
                        entries = repo.blockmap.node(node_id, img.fanout)[1]
                        data.update(e for e in entries if e != HOLE)
            except DamageError as exc:
                raise type(exc)(
                    f"gc stopped before deleting anything: the map of disk {img.disk!r} of "
                    f"backup {backup.id} ({backup.vm}) is damaged: {exc}; run `vmaccel verify`"
                ) from exc
    return nodes | data


_Contents = list[tuple[PackRow, list[ChunkLocation]]]


def _old_packs(repo: Repository, older_than: float) -> tuple[_Contents, int, int]:
    """(live packs older than ``older_than`` with their chunk rows, how many younger ones,
    the bytes of the younger ones)."""
    old: _Contents = []
    young = young_bytes = 0
    for pack in repo.index.packs(state="live"):
        if pack.created > older_than:
            young, young_bytes = young + 1, young_bytes + pack.size
        else:
            old.append((pack, repo.index.chunks_in_pack(pack.id)))
    return old, young, young_bytes


def _plan(
    old: _Contents,
    young_bytes: int,
    live: set[bytes],
    verdict: Verdict,
    threshold: float,
    max_unused: float,
) -> tuple[list[PackPlan], list[PackPlan], _Contents]:
    """Split the old packs into (to delete, to repack, held): a pack holding a condemned
    chunk that must wait is held (left alone this run); see ``repack_threshold`` and
    ``max_unused`` of :func:`collect_garbage` for the rest."""
    doomed, repack, partly_dead, held = [], [], [], []
    staying = young_bytes
    for pack, chunks in old:
        if any(c.id in verdict.waiting for c in chunks if c.id not in live):
            held.append((pack, chunks))
            staying += pack.size
            continue
        plan = PackPlan(
            pack,
            tuple(c for c in chunks if c.id in live),
            tuple(c for c in chunks if c.id not in live),
        )
        if not plan.live:
            doomed.append(plan)
            continue
        staying += pack.size
        if pack.size - plan.live_size > threshold * pack.size:
            repack.append(plan)
        elif pack.size > plan.live_size:
            partly_dead.append(plan)
    partly_dead.sort(key=lambda p: (p.pack.size - p.live_size) / p.pack.size, reverse=True)
    dead_left = sum(p.pack.size - p.live_size for p in partly_dead)
    staying -= sum(p.pack.size - p.live_size for p in repack)  # the bytes after repacking
    for plan in partly_dead:
        if dead_left <= max_unused * staying:
            break
        repack.append(plan)
        dead_left -= plan.pack.size - plan.live_size
        staying -= plan.pack.size - plan.live_size
    return doomed, repack, held


def _estimate(
    repo: Repository,
    older_than: float,
    unfinished: list[BackupRow],
    doomed: list[PackPlan],
    repack: list[PackPlan],
    writers: bool,
) -> dict[str, Any]:
    """What gc would do (nothing changes). The space check replays the real order per pack
    (the real run groups packs into fewer new ones, so it needs a little less). With
    ``writers`` unfinished backups and stray files would be left alone."""
    orphans, temps, stray_bytes = _strays(repo, older_than)
    left: dict[str, Any] = {}
    if writers:
        left = {"backups_left": tuple(b.uuid for b in unfinished),
                "strays_left": len(orphans) + len(temps)}  # fmt: skip
        orphans, temps, stray_bytes, unfinished = [], [], 0, []
    free = repo.free_bytes() + repo.reserve_bytes() + stray_bytes
    free += sum(p.pack.size for p in doomed)
    done: list[PackPlan] = []
    needed = 0
    for plan in repack_order(repack):
        want = space_for(plan.live_size, len(plan.live))
        if want > free:
            needed = want - free
            break
        done.append(plan)
        free += plan.pack.size - plan.live_size
    pending = repo.index.packs(state="deleting")
    return {
        **left,
        "backups_removed": tuple(b.uuid for b in unfinished),
        "chunks_deleted": sum(len(p.dead) for p in (*doomed, *done)),
        "packs_deleted": len(doomed),
        "packs_repacked": len(done),
        "packs_written": len(done),
        "orphans_deleted": len(orphans),
        "temporary_deleted": len(temps),
        "packs_pending": tuple(p.name for p in pending),
        "bytes_freed": stray_bytes + sum(p.pack.size for p in (*doomed, *done)),
        "bytes_written": sum(p.live_size for p in done),
        "bytes_pending": sum(p.size for p in pending),
        "packs_not_repacked": len(repack) - len(done),
        "space_needed": needed,
    }


class _Sweep:
    """The deleting half of gc, in the order that needs the least free space: the space
    reserve, unfinished backups, temporary files, packs left ``deleting`` and orphans, then
    whole dead packs in batches sized to the free space (each batch's rows, then its files),
    and only then repacking, smallest-live first (see catalog.repack). With ``writers``
    (a lease was live when the mark began) unfinished backups, orphan pack files and
    temporary files are left alone: they may be a running writer's."""

    def __init__(self, repo: Repository, older_than: float, writers: bool) -> None:
        self.repo, self.older_than, self.writers = repo, older_than, writers
        self.freed = self.orphans = self.temps = 0
        self.blocked = False  # a reader held readers.lock at the last attempt
        self.orphans_checked = writers  # beside writers orphans are not looked for

    def run(
        self, unfinished: list[BackupRow], doomed: list[PackPlan], repack: list[PackPlan]
    ) -> dict[str, Any]:
        repo = self.repo
        repo.release_reserve()  # SQLite needs room for its WAL before anything can be freed
        left: dict[str, Any] = {}
        try:
            if self.writers:
                left = self._left_alone(unfinished)
            else:
                self._clear_leftovers(unfinished)
            self.delete_files()
            dead, retired = self._doom(doomed)
            result = RepackResult(left=len(repack))
            if not self.blocked:
                result = Repacker(repo, self.delete_files).run(repack)
        finally:
            repo.ensure_reserve()
        pending = repo.index.packs(state="deleting")
        return {
            **left,
            "backups_removed": () if self.writers else tuple(b.uuid for b in unfinished),
            "chunks_deleted": dead + result.dead_chunks,
            "packs_deleted": retired,
            "packs_repacked": result.retired,
            "packs_written": result.written,
            "orphans_deleted": self.orphans,
            "temporary_deleted": self.temps,
            "packs_pending": tuple(p.name for p in pending),
            "bytes_freed": self.freed,
            "bytes_written": result.written_bytes,
            "bytes_pending": sum(p.size for p in pending),
            "packs_not_repacked": result.left,
            "space_needed": result.shortfall,
        }

    def _left_alone(self, unfinished: list[BackupRow]) -> dict[str, Any]:
        """What gc leaves beside running writers (report fields)."""
        orphans, temps, _ = _strays(self.repo, self.older_than)
        return {
            "backups_left": tuple(b.uuid for b in unfinished),
            "strays_left": len(orphans) + len(temps),
        }

    def _clear_leftovers(self, unfinished: list[BackupRow]) -> None:
        """No writer is running: unfinished backups, temporary packs and temporary reserve
        files older than the grace period are garbage."""
        repo = self.repo
        for b in unfinished:
            remove_backup(repo, b)
        for temp in repo.packs.temporary():
            if temp.mtime < self.older_than:
                repo.packs.delete_temporary(temp.name)
                self.temps, self.freed = self.temps + 1, self.freed + temp.size
        clear_reserve_temps(repo.path, self.older_than)

    def _doom(self, doomed: list[PackPlan]) -> tuple[int, int]:
        """Retire whole dead packs, batch by batch, deleting each batch's files before the
        next: a batch's chunk rows fit the WAL space there is (a deleted row may dirty one
        page), so even on a full disk the first batch commits and frees room for the next.
        Deletes are conditional (a chunk resurrected meanwhile stays, and so does a pack a
        row still names). Returns (dead chunk rows deleted, packs marked ``deleting``)."""
        dead = retired = i = 0
        while i < len(doomed):
            budget = max(64, (self.repo.free_bytes() - INDEX_BASE) // INDEX_PER_CHUNK)
            batch = [doomed[i]]
            rows = len(doomed[i].dead)
            for p in doomed[i + 1 :]:
                if rows + len(p.dead) > budget:
                    break
                batch.append(p)
                rows += len(p.dead)
            with self.repo.index.writing():
                for p in batch:
                    dead += self.repo.index.delete_condemned(p.pack.id, (c.id for c in p.dead))
                    retired += self.repo.index.retire_pack(p.pack.id)
            i += len(batch)
            self.delete_files()
        return dead, retired

    def delete_files(self) -> bool:
        """Delete ``deleting`` packs (row, then file) and orphan pack files, under
        ``readers.lock`` (a reader that looked a chunk up before its row moved could still be
        about to read the old file). Returns False when a reader holds it (nothing deleted).
        """
        # Orphans are looked for until they are gone (once, usually): gc itself makes none.
        orphans = [] if self.orphans_checked else _strays(self.repo, self.older_than, False)[0]
        doomed = self.repo.index.packs(state="deleting")
        if not doomed and not orphans:
            return True
        lock = self.repo.readers_lock()
        if not lock.try_acquire():
            logger.warning("a reader holds %s: %d pack(s) stay 'deleting'", self.repo.path,
                           len(doomed))  # fmt: skip
            self.blocked = True
            return False
        self.blocked = False
        try:
            for name in orphans:
                logger.info("deleting orphan pack file %s (no index row names it)", name)
                size = self.repo.packs.size(name)
                deleted = self.repo.packs.delete(name)  # else locked: freed on expiry
                self.orphans, self.freed = self.orphans + 1, self.freed + (size if deleted else 0)
            self.orphans_checked = True
            self.freed += _delete_doomed(self.repo, doomed)
        finally:
            lock.release()
        return True


def _strays(
    repo: Repository, older_than: float, temporary: bool = True
) -> tuple[list[str], list[str], int]:
    """(orphan pack files, temporary files, their bytes), both older than ``older_than``."""
    known = {p.name for p in repo.index.packs()}
    orphans, temps, size = [], [], 0
    for pack in repo.packs.files():  # one listing: size and mtime without a request each
        if pack.name not in known and pack.mtime < older_than:
            orphans.append(pack.name)
            size += pack.size
    for temp in repo.packs.temporary() if temporary else ():
        if temp.mtime < older_than:
            temps.append(temp.name)
            size += temp.size
    return orphans, temps, size


def _delete_doomed(repo: Repository, doomed: list[PackRow]) -> int:
    """Delete each pack's row, then its file (a crash in between leaves an orphan file, which
    the next gc deletes; the reverse order would leave a row naming a missing file). Returns
    the file bytes deleted."""
    freed = 0
    for pack in doomed:
        if repo.index.chunks_in_pack(pack.id):  # never expected: rows left with the pack
            logger.error("pack %s is 'deleting' but still holds chunk rows; kept", pack.name)
            continue
        try:
            size = repo.packs.size(pack.name)
        except ChunkMissing:
            size = 0
        with repo.index.writing():
            repo.index.delete_pack(pack.id)
        if repo.packs.delete(pack.name):  # else locked: freed once the lock expires
            freed += size
    return freed

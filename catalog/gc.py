"""``gc``: delete what no complete backup references (mark and sweep), and repack.

Run under the writer lock (the caller opens the repository with ``write=True``), so no backup
is being written: whatever an unfinished backup left behind is garbage by construction.

1. **Unfinished backups.** Backups not ``complete`` (``in_progress``/``failed`` from a killed
   or aborted writer, ``deleting`` from an interrupted prune) are removed like prune removes
   them (state ``deleting`` -> manifest -> rows).
2. **Mark.** Every map node of every image of every complete backup, and every data chunk
   named by their leaves, is live. Map walks share one ``seen`` set, so subtrees shared
   between synthetic fulls are walked once. A damaged map stops gc before it deletes
   anything (what lies below a damaged node is unknown, hence possibly live).
3. **Sweep** (DESIGN invariant 2). Packs created less than ``grace_seconds`` ago are left
   alone, live or not. Of the older ones, a pack with no live chunk is deleted; a pack whose
   dead file bytes exceed ``repack_threshold`` of its size is repacked: its live chunks are
   copied, as stored, into new packs. Write orders:

   * delete: one transaction deletes the pack's chunk rows and marks it ``deleting``
     (so no backup can deduplicate against it any more) -> pack row deleted -> file deleted;
   * repack: new pack durable (fsync) -> one transaction adds its row, moves the live chunk
     rows to it, deletes the old pack's dead chunk rows and marks the old pack ``deleting``
     -> old pack row deleted -> old file deleted.

   The row goes before the file so that a crash in between leaves an orphan file (garbage,
   which the next gc deletes) rather than a row naming a missing file (which verify rightly
   calls damage). Orphan pack files (no row: also sealed by a writer killed before its rows
   committed) and temporary files under ``packs/tmp`` older than the grace period are
   deleted too.
4. **Pack files** (of ``deleting`` packs and orphans) are deleted only while gc holds
   ``readers.lock`` exclusively: a reader that looked a chunk up before its row moved may
   still be about to read the old file. If a reader is active they stay (the report names
   the pending packs) and the next gc finishes the job. Temporary files were never named
   anywhere and are deleted regardless.

Every step is crash safe: a killed gc leaves at worst ``deleting`` rows, orphan files or
temporary files, each of which the next gc finishes.

Memory: the live set holds every live chunk id in a Python set (about 100 bytes per unique
chunk: ~1.6 GB for 16 million 64 KiB chunks, i.e. 1 TiB of unique data). A SQLite temporary
table of live ids would bound this; it is the way to go when repositories outgrow RAM.
"""

from __future__ import annotations

import logging
import secrets
import time
import zlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from catalog.blockmap import HOLE
from catalog.errors import ChunkCorrupt, ChunkMissing, DamageError, UsageError
from catalog.index import ChunkLocation, PackRow
from catalog.pack import ENTRY_HEADER_SIZE, FOOTER_SIZE, HEADER_SIZE, PackWriter
from catalog.packstore import PackSink
from catalog.prune import remove_backup

if TYPE_CHECKING:
    from catalog.repository import Repository

logger = logging.getLogger(__name__)

# File bytes one chunk costs in a pack: inline header, payload, index entry (header + offset).
_PER_CHUNK = 2 * ENTRY_HEADER_SIZE + 8
_PER_PACK = HEADER_SIZE + FOOTER_SIZE + 4


@dataclass(frozen=True)
class GcReport:
    """The outcome of one gc. Byte counts are file bytes on the pack store.

    ``bytes_freed`` is file bytes deleted minus the bytes of the packs repacking wrote.
    ``packs_pending`` are packs left ``deleting`` because a reader held the repository; the
    next gc deletes them. With ``dry_run`` nothing changed and the counts say what would.
    """

    dry_run: bool
    grace_seconds: float
    backups_removed: tuple[str, ...] = ()
    live_chunks: int = 0
    chunks_deleted: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    packs_young: int = 0
    orphans_deleted: int = 0
    temporary_deleted: int = 0
    packs_pending: tuple[str, ...] = ()
    bytes_freed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["backups_removed"] = list(self.backups_removed)
        d["packs_pending"] = list(self.packs_pending)
        return d

    def summary(self) -> list[str]:
        would = "would be " if self.dry_run else ""
        lines = [
            f"{len(self.backups_removed)} unfinished backup(s) {would}removed",
            f"{self.live_chunks} live chunk(s); {self.chunks_deleted} dead chunk(s) {would}deleted",
            f"{self.packs_deleted} pack(s) {would}deleted, {self.packs_repacked} {would}repacked "
            f"into {self.packs_written} new pack(s)",
            f"{self.orphans_deleted} orphan pack file(s) and {self.temporary_deleted} temporary "
            f"file(s) {would}deleted",
            f"{_size(self.bytes_freed)} {would}freed",
        ]
        if self.packs_young:
            lines.append(
                f"{self.packs_young} pack(s) younger than the grace period "
                f"({self.grace_seconds:g} s) left alone"
            )
        if self.packs_pending:
            lines.append(
                f"{len(self.packs_pending)} pack(s) not deleted yet because a reader holds the "
                "repository; run gc again when no mount, restore or verify is running"
            )
        return lines


@dataclass(frozen=True)
class _PackPlan:
    pack: PackRow
    live: tuple[ChunkLocation, ...]
    dead: tuple[ChunkLocation, ...]


def collect_garbage(
    repo: Repository,
    grace_seconds: float = 3600,
    dry_run: bool = False,
    repack_threshold: float = 0.5,
) -> GcReport:
    """Mark and sweep ``repo`` (see the module docstring). Needs the writer lock.

    ``grace_seconds``: packs (and stray files) younger than this are never touched.
    ``repack_threshold``: repack a pack once more than this fraction of its file bytes is dead.
    Returns after everything reported as done is durable.
    """
    if not repo.writable:
        raise UsageError("gc needs the repository opened for writing")
    if grace_seconds < 0 or not 0 <= repack_threshold < 1:
        raise UsageError("gc needs a grace period >= 0 and a repack threshold in [0, 1)")
    now = time.time()
    unfinished = repo.backups(state=None)
    unfinished = [b for b in unfinished if b.state != "complete"]
    if not dry_run:
        for b in unfinished:
            remove_backup(repo, b)
    live = mark(repo)
    doomed, repack, young = _plan(repo, live, now - grace_seconds, repack_threshold)
    dead_chunks = sum(len(p.dead) for p in (*doomed, *repack))
    if dry_run:
        freed = sum(p.pack.size for p in doomed)
        freed += sum(p.pack.size - _packed_size(p.live) for p in repack)
        strays = _strays(repo, now - grace_seconds)
        return GcReport(
            True, grace_seconds, tuple(b.uuid for b in unfinished), len(live), dead_chunks,
            len(doomed), len(repack), 0, young, len(strays[0]), len(strays[1]),
            tuple(p.name for p in repo.index.packs(state="deleting")),
            freed + strays[2],
        )  # fmt: skip
    with repo.index.transaction():
        for p in doomed:
            repo.index.delete_chunks(c.id for c in p.dead)
            repo.index.set_pack_state(p.pack.id, "deleting")
    written, written_bytes = _Repacker(repo).run(repack)
    orphans, temps, deleted_bytes, pending = _delete_files(repo, now - grace_seconds)
    report = GcReport(
        False, grace_seconds, tuple(b.uuid for b in unfinished), len(live), dead_chunks,
        len(doomed), len(repack), written, young, orphans, temps,
        tuple(p.name for p in pending), deleted_bytes - written_bytes,
    )  # fmt: skip
    logger.info("gc: %s", "; ".join(report.summary()))
    return report


def mark(repo: Repository) -> set[bytes]:
    """Ids of every chunk (map nodes and data) reachable from a complete backup's images.

    Raises a :class:`DamageError` naming the image whose map cannot be walked.
    """
    nodes: set[bytes] = set()  # also the walk's seen set: shared subtrees are walked once
    data: set[bytes] = set()
    for backup in repo.backups(state="complete"):
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


def _plan(
    repo: Repository, live: set[bytes], young_after: float, threshold: float
) -> tuple[list[_PackPlan], list[_PackPlan], int]:
    """Split live packs into (to delete, to repack, count left alone for their youth)."""
    doomed, repack, young = [], [], 0
    for pack in repo.index.packs(state="live"):
        if pack.created > young_after:
            young += 1
            continue
        chunks = repo.index.chunks_in_pack(pack.id)
        plan = _PackPlan(
            pack,
            tuple(c for c in chunks if c.id in live),
            tuple(c for c in chunks if c.id not in live),
        )
        if not plan.live:
            doomed.append(plan)
        elif pack.size - _packed_size(plan.live) > threshold * pack.size:
            repack.append(plan)
    return doomed, repack, young


def _packed_size(chunks: tuple[ChunkLocation, ...]) -> int:
    """File bytes a pack holding exactly ``chunks`` takes."""
    return _PER_PACK + sum(_PER_CHUNK + c.stored_len for c in chunks)


class _Repacker:
    """Copies live chunks, as stored, into new packs (the ChunkStore write order, plus the
    moving of rows). An old pack is retired in the transaction of the new pack that received
    its last live chunk, so every live chunk always has a committed, durable location."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._sink: PackSink | None = None
        self._writer: PackWriter | None = None
        self._name = ""
        self._sources: list[_PackPlan] = []
        self.written = 0
        self.written_bytes = 0

    def run(self, plans: list[_PackPlan]) -> tuple[int, int]:
        """Repack every plan; returns (new packs, their bytes)."""
        try:
            for plan in plans:
                self._copy(plan)
                if self._writer is not None and self._writer.size >= self.repo.config.pack_size:
                    self._seal()
            self._seal()
        finally:
            if self._sink is not None:
                self._sink.abort()
        return self.written, self.written_bytes

    def _copy(self, plan: _PackPlan) -> None:
        if self._writer is None:
            self._name = secrets.token_hex(16)
            self._sink = self.repo.packs.create(self._name)
            self._writer = PackWriter(self._sink.stream, self.repo.config.repo_id)
        for c in plan.live:
            payload = self.repo.packs.read(c.pack, c.offset, c.stored_len)
            if zlib.crc32(payload) != c.crc:
                raise ChunkCorrupt(
                    f"gc stopped repacking: chunk {c.id.hex()[:16]} in pack {c.pack} at offset "
                    f"{c.offset} fails its checksum; run `vmaccel verify`"
                )
            self._writer.add(c.id, c.kind, c.flags, c.raw_len, payload, c.crc)
        self._sources.append(plan)

    def _seal(self) -> None:
        writer, sink, name = self._writer, self._sink, self._name
        if writer is None or sink is None:
            return
        size = writer.seal()
        sink.commit()  # durable and in place before any row names it
        self._writer = self._sink = None
        index = self.repo.index
        with index.transaction():
            pack_id = index.add_pack(name, size, time.time(), writer.entries)
            index.move_chunks(pack_id, writer.entries)
            for old in self._sources:
                index.delete_chunks(c.id for c in old.dead)
                index.set_pack_state(old.pack.id, "deleting")
        logger.debug("repacked %d pack(s) into %s", len(self._sources), name)
        self._sources = []
        self.written += 1
        self.written_bytes += size


def _strays(repo: Repository, older_than: float) -> tuple[list[str], list[str], int]:
    """(orphan pack files, temporary files, their bytes), both older than ``older_than``."""
    known = {p.name for p in repo.index.packs()}
    orphans, temps, size = [], [], 0
    for name in repo.packs.names():
        if name not in known and repo.packs.mtime(name) < older_than:
            orphans.append(name)
            size += repo.packs.size(name)
    for name in repo.packs.temporary_names():
        tsize, mtime = repo.packs.temporary_stat(name)
        if mtime < older_than:
            temps.append(name)
            size += tsize
    return orphans, temps, size


def _delete_files(repo: Repository, older_than: float) -> tuple[int, int, int, list[PackRow]]:
    """Delete ``deleting`` packs (row, then file), orphan pack files and temporary files.

    Pack files are deleted only while gc holds ``readers.lock`` exclusively: a reader that
    looked a chunk up before its row moved could still be about to read the old file.
    Temporary files were never named anywhere and go regardless. Returns (orphans deleted,
    temporaries deleted, file bytes deleted, packs left pending because a reader is active).
    """
    orphans, temps, stray_bytes = _strays(repo, older_than)
    for name in temps:
        repo.packs.delete_temporary(name)
    doomed = repo.index.packs(state="deleting")
    if not doomed and not orphans:
        return 0, len(temps), stray_bytes, []
    lock = repo.readers_lock()
    if not lock.try_acquire():
        logger.warning("a reader holds %s: %d pack(s) stay 'deleting'", repo.path, len(doomed))
        return 0, len(temps), stray_bytes - sum(repo.packs.size(n) for n in orphans), doomed
    try:
        for name in orphans:
            logger.info("deleting orphan pack file %s (no index row names it)", name)
            repo.packs.delete(name)
        freed, pending = _delete_doomed(repo, doomed)
    finally:
        lock.release()
    return len(orphans), len(temps), stray_bytes + freed, pending


def _delete_doomed(repo: Repository, doomed: list[PackRow]) -> tuple[int, list[PackRow]]:
    """Delete each pack's row, then its file (a crash in between leaves an orphan file, which
    the next gc deletes; the reverse order would leave a row naming a missing file)."""
    freed, pending = 0, []
    for pack in doomed:
        if repo.index.chunks_in_pack(pack.id):  # never expected: rows left with the pack
            logger.error("pack %s is 'deleting' but still holds chunk rows; kept", pack.name)
            pending.append(pack)
            continue
        try:
            size = repo.packs.size(pack.name)
        except ChunkMissing:
            size = 0
        with repo.index.transaction():
            repo.index.delete_pack(pack.id)
        repo.packs.delete(pack.name)
        freed += size
    return freed, pending


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"

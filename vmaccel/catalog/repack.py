"""Repacking for gc: copy the live chunks of mostly-dead packs, as stored, into new packs,
smallest-live first, into the space the deletions before it freed.

A repack needs new space before it frees any: each new pack is written while the packs it
replaces still exist. So :class:`Repacker` groups source packs (smallest live bytes first)
into new packs of at most ``pack_size`` bytes, and before writing a group checks that the
filesystem has room for it plus :func:`index_margin` (SQLite writes the moved rows to its
WAL); when a group would not fit it seals what it has (retiring those sources frees their
space) and, when not even the smallest remaining source fits, stops and says how many more
bytes it needs (``shortfall``). Write order per new pack:

new pack durable (its upload committed: fsync, then linked into place) -> one transaction
adds its row, moves the live chunk rows to it (each only if still in its source pack),
deletes the sources' dead chunk rows (each only if still condemned and in its source pack:
a backup that resurrected one meanwhile wins) and marks each source ``deleting`` if no row
names it any more -> the caller deletes the sources' files (see catalog.gc). Sources hold no
condemned chunk that must wait (catalog.condemn): gc never plans those packs.

A full disk met anyway (ENOSPC while writing, SQLITE_FULL while committing) leaves the
repository consistent: the partial or unindexed new pack is removed at once (no row names
it), the sources keep their rows, and :class:`~vmaccel.vocabulary.errors.NoSpaceLeft` names the path
and the bytes needed.
"""

from __future__ import annotations

import errno
import logging
import secrets
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmaccel.catalog.index import ChunkLocation, PackRow
from vmaccel.catalog.objectstore import Upload
from vmaccel.catalog.pack import ENTRY_HEADER_SIZE, FOOTER_SIZE, HEADER_SIZE, PackWriter
from vmaccel.vocabulary.errors import ChunkCorrupt, NoSpaceLeft

if TYPE_CHECKING:
    from vmaccel.catalog.repository import Repository

logger = logging.getLogger(__name__)

# File bytes one chunk costs in a pack: inline header, payload, index entry (header + offset).
_PER_CHUNK = 2 * ENTRY_HEADER_SIZE + 8
_PER_PACK = HEADER_SIZE + FOOTER_SIZE + 4
_FS_SLACK = 64 * 1024  # filesystem metadata (extent blocks, directory entries) per new pack
INDEX_BASE = 256 * 1024  # WAL header, -shm, the pack row, index pages near the insert point
INDEX_PER_CHUNK = 4096  # a moved chunk row may dirty one page of the chunk table


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class PackPlan:
    """One old pack and its chunks, split by liveness."""

    pack: PackRow
    live: tuple[ChunkLocation, ...]
    dead: tuple[ChunkLocation, ...]

    @property
    def live_size(self) -> int:
        """File bytes a pack holding exactly the live chunks takes."""
        return packed_size(self.live)


def packed_size(chunks: tuple[ChunkLocation, ...]) -> int:
    """File bytes a pack holding exactly ``chunks`` takes."""
    return _PER_PACK + sum(_PER_CHUNK + c.stored_len for c in chunks)


def index_margin(chunks: int) -> int:
    """Free bytes the index may need to commit the move of ``chunks`` chunk rows."""
    return INDEX_BASE + INDEX_PER_CHUNK * chunks


def space_for(chunk_bytes: int, chunks: int) -> int:
    """Free bytes needed to write and index a new pack of ``chunk_bytes`` (payloads and
    per-chunk overhead) holding ``chunks`` chunks."""
    return _PER_PACK + chunk_bytes + _FS_SLACK + index_margin(chunks)


def repack_order(plans: list[PackPlan]) -> list[PackPlan]:
    """Smallest live bytes first: the cheapest repacks free space for the larger ones."""
    return sorted(plans, key=lambda p: (p.live_size, p.pack.name))


@dataclass
class RepackResult:
    """``retired``: source packs now ``deleting`` (their files are the caller's to delete);
    ``shortfall``: more free bytes needed to repack ``left`` (0 when everything was)."""

    written: int = 0
    written_bytes: int = 0
    retired: int = 0
    dead_chunks: int = 0
    shortfall: int = 0
    left: int = 0


class Repacker:
    """Copies live chunks into new packs (see the module docstring). ``after_seal`` is
    called after each new pack's transaction (gc deletes the retired files there) and
    returns False to stop repacking (a reader holds the old files: writing more would only
    grow the repository)."""

    def __init__(self, repo: Repository, after_seal: Callable[[], bool]) -> None:
        self.repo = repo
        self._after_seal = after_seal
        self._sink: Upload | None = None
        self._writer: PackWriter | None = None
        self._name = ""
        self._sources: list[PackPlan] = []
        self._budget = 0  # bytes the group being written may still take
        self.result = RepackResult()

    def run(self, plans: list[PackPlan]) -> RepackResult:
        """Repack ``plans`` smallest-live first as far as the free space allows."""
        todo = repack_order(plans)
        try:
            for i, plan in enumerate(todo):
                if not self._place(plan):
                    self.result.left = len(todo) - i
                    break
                self._copy(plan)
            else:
                self._seal()
        finally:
            self._discard()
        return self.result

    def _discard(self) -> None:
        """Remove the new pack being written, if any (it is garbage: no row names it)."""
        sink = self._sink
        self._sink = self._writer = None
        if sink is not None:
            sink.abort()  # removes the staged bytes even when flushing them fails (disk full)

    def _place(self, plan: PackPlan) -> bool:
        """Make room for ``plan`` in the current group or a new one; False to stop."""
        need = plan.live_size - _PER_PACK  # its chunks' bytes in a pack
        chunks = len(plan.live)
        if self._writer is not None:
            fits_pack = self._writer.size + need <= self.repo.config.pack_size
            if fits_pack and need + INDEX_PER_CHUNK * chunks <= self._budget:
                self._budget -= need + INDEX_PER_CHUNK * chunks
                return True
            if not self._seal():
                return False
        wanted = space_for(need, chunks)
        free = self.repo.free_bytes()
        if wanted > free:
            self.result.shortfall = wanted - free
            logger.warning(
                "gc: repacking pack %s needs %d bytes, %s has %d free",
                plan.pack.name, wanted, self.repo.path, free,
            )  # fmt: skip
            return False
        self._budget = free - wanted
        return True

    def _copy(self, plan: PackPlan) -> None:
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
            try:
                self._writer.add(c.id, c.kind, c.flags, c.raw_len, payload, c.crc)
            except OSError as exc:
                self._no_space(exc, plan)
        self._sources.append(plan)

    def _seal(self) -> bool:
        """Seal the current group, index it, retire its sources; False to stop repacking."""
        writer, sink, name = self._writer, self._sink, self._name
        if writer is None or sink is None:
            return True
        try:
            size = writer.seal()
            sink.commit()  # durable and in place before any row names it
        except OSError as exc:
            self._no_space(exc, None)
        self._writer = self._sink = None
        index = self.repo.index
        try:
            with index.writing():
                pack_id = index.add_pack(name, size, time.time(), writer.entries)
                sources = {c.id: old.pack.id for old in self._sources for c in old.live}
                index.move_chunks(pack_id, writer.entries, sources)
                dead = retired = 0
                for old in self._sources:
                    dead += index.delete_condemned(old.pack.id, (c.id for c in old.dead))
                    retired += index.retire_pack(old.pack.id)
        except NoSpaceLeft as exc:
            self.repo.packs.delete(name)  # no row names it: garbage, and space we need
            raise NoSpaceLeft(
                f"gc stopped repacking: {exc}; the new pack was removed and the old packs "
                "are still in use (the repository is consistent); free some space and run "
                "gc again"
            ) from exc
        logger.debug("repacked %d pack(s) into %s", len(self._sources), name)
        self.result.retired += retired
        self.result.dead_chunks += dead
        self._sources = []
        self.result.written += 1
        self.result.written_bytes += size
        return self._after_seal()

    def _no_space(self, exc: OSError, plan: PackPlan | None) -> None:
        """Turn ENOSPC/EDQUOT while writing a new pack into :class:`NoSpaceLeft`."""
        if exc.errno not in _NO_SPACE:
            raise exc
        path = self._sink.path if self._sink is not None else self._name
        self._discard()  # the partial pack is garbage: remove it now, freeing its space
        group = [*self._sources, *([plan] if plan else [])]
        needed = space_for(
            sum(p.live_size - _PER_PACK for p in group), sum(len(p.live) for p in group)
        )
        raise NoSpaceLeft(
            f"gc stopped repacking: no space left writing {path} ({exc.strerror}): that pack "
            f"needs {needed} free bytes, {self.repo.free_bytes()} are free now; the partial "
            "pack was removed and the old packs are still in use (the repository is "
            "consistent); free some space and run gc again"
        ) from exc

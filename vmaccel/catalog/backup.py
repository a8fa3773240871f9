"""Writing a backup: one VM's images, committed together or not at all.

Life of a backup (DESIGN invariant 1)::

    begin        backup row inserted, state 'in_progress' (invisible to readers)
    images       chunks appended to packs; sealed packs become durable, then their rows commit
    commit       last pack sealed and durable -> (Object Lock: every object it may reference
                 locked until at least now + the lock period, catalog.s3lock) -> ONE
                 transaction: image rows (with the changeIds) + backup state 'complete' +
                 manifest written durably -> COMMIT
    abort/crash  the row stays 'in_progress' or becomes 'failed'; gc removes it and whatever
                 chunks only it referenced

Use as a context manager: leaving the block without :meth:`BackupWriter.commit` aborts.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from vmaccel.catalog.blockmap import BlockMap, empty_map
from vmaccel.catalog.chunkstore import ChunkStore
from vmaccel.catalog.imagewriter import ImageWriter
from vmaccel.catalog.index import (
    BackupMeta,
    BackupRow,
    ImageMeta,
    ImageRow,
    ImageStats,
    NewImage,
)
from vmaccel.catalog.index.records import FAILED
from vmaccel.catalog.s3lock import protected_keys
from vmaccel.vocabulary.errors import UsageError

if TYPE_CHECKING:
    from vmaccel.catalog.repository import Repository

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PendingImage:
    """An image whose map is built but not yet committed."""

    disk: str
    size: int
    root: bytes | None
    depth: int
    parent_id: int | None
    change_id: str | None
    meta: ImageMeta
    stats: ImageStats


def merged_meta(base: BackupMeta, update: BackupMeta | Mapping[str, Any] | None) -> BackupMeta:
    """``base`` with the keys ``update`` sets (as a record: its fields that are not None)."""
    if update is None:
        return base
    doc = update.to_json() if isinstance(update, BackupMeta) else dict(update)
    return BackupMeta.from_json({**base.to_json(), **doc})


class BackupWriter:
    """One backup being written; see the module docstring. ``meta`` is stored at once and
    completed by :meth:`commit`."""

    def __init__(self, repo: Repository, vm: str, meta: BackupMeta) -> None:
        if not repo.writable:
            raise UsageError("the repository was opened read-only; backups need write=True")
        self.repo, self.vm, self.meta = repo, vm, meta
        # Each backup appends through its own pack writer, so several backups (VMs) can run
        # in parallel threads; they share the index, whose connection is locked.
        cfg = repo.config
        self.chunks = ChunkStore(repo.index, repo.packs, repo.codec, cfg.repo_id, cfg.pack_size)
        self.blockmap = BlockMap(self.chunks)
        self.uuid = str(uuid.uuid4())
        self.started = time.time()
        with repo.index.writing():
            self.id = repo.index.add_backup(self.uuid, vm, self.started, meta)
        self._images: dict[str, PendingImage] = {}
        self._open: dict[str, ImageWriter] = {}
        self._done = False

    def image_writer(self, disk: str, size: int, parent: ImageRow | None = None) -> ImageWriter:
        """A writer for disk ``disk`` of ``size`` bytes, starting from ``parent``'s map.

        With a parent, only the changed blocks need writing: every other block keeps the
        parent's chunk. Without one, the image starts as all holes.
        """
        if disk in self._images or disk in self._open:
            raise UsageError(f"disk {disk!r} is already part of this backup")
        cfg = self.repo.config
        if parent is not None and parent.block_size != cfg.block_size:
            raise UsageError("the parent image has another block size; take a full backup")
        base = self.repo.map_root(parent) if parent else empty_map(0, cfg.map_fanout)
        writer = ImageWriter(self.chunks, self.blockmap, base, size, cfg.block_size)
        if parent is not None and parent.size != size:
            self._resize_tail(writer, parent, size)
        self._open[disk] = writer
        return writer

    def finish_image(
        self,
        disk: str,
        writer: ImageWriter,
        parent: ImageRow | None = None,
        change_id: str | None = None,
        meta: ImageMeta | Mapping[str, Any] | None = None,
    ) -> PendingImage:
        """Close ``writer`` and remember its image for :meth:`commit`. ``meta`` as a record
        or as its JSON object (see :class:`~vmaccel.catalog.index.meta.ImageMeta`)."""
        if self._open.get(disk) is not writer:
            raise UsageError(f"no open image writer for disk {disk!r}")
        root = writer.finish()
        del self._open[disk]
        img = PendingImage(
            disk,
            writer.size,
            root.root,
            root.depth,
            parent.id if parent else None,
            change_id,
            meta if isinstance(meta, ImageMeta) else ImageMeta.from_json(meta or {}),
            writer.stats.record(),
        )
        self._images[disk] = img
        return img

    def commit(self, meta: BackupMeta | Mapping[str, Any] | None = None) -> BackupRow:
        """Make the backup durable and visible, with ``meta`` merged into its metadata
        (see :func:`merged_meta`). Returns its index row."""
        if self._open:
            raise UsageError(f"disks {sorted(self._open)} were not finished")
        repo, cfg = self.repo, self.repo.config
        self.chunks.flush()  # every chunk and map node durable and indexed first
        finished = time.time()
        if repo.store.lock_seconds:  # Object Lock: what it may reference outlives its lock
            repo.store.protect(protected_keys(repo.index, cfg.encrypted), finished)
        self.meta = merged_meta(self.meta, meta)
        with repo.index.writing():
            for img in self._images.values():
                repo.index.add_image(
                    self.id,
                    NewImage(
                        img.disk,
                        img.size,
                        cfg.block_size,
                        cfg.map_fanout,
                        img.depth,
                        img.root,
                        img.parent_id,
                        img.change_id,
                        img.meta,
                        img.stats,
                    ),
                )
            repo.index.finish_backup(self.id, finished, self.meta)
            if repo.lease is not None:  # complete backups reference no condemned chunk
                repo.index.absolve_since(repo.lease.id)  # (catalog.condemn)
            # The manifest is made durable inside the transaction, just before COMMIT: a crash
            # after the commit must never leave a complete backup that rebuild-index cannot
            # restore. A crash before it leaves a manifest of an unfinished backup, which gc
            # deletes with the backup (its chunks are durable anyway).
            row = repo.backup(self.id)
            repo.write_manifest(row)
        self._done = True
        logger.info("backup %s of %s complete: %d images", row.id, self.vm, len(self._images))
        return row

    def abort(self) -> None:
        if self._done:
            return
        for w in self._open.values():
            w.abort()
        self._open.clear()
        self.chunks.abort()
        with self.repo.index.writing():
            self.repo.index.set_backup_state(self.id, FAILED)
        self._done = True

    def _resize_tail(self, writer: ImageWriter, parent: ImageRow, size: int) -> None:
        """Rewrite the block holding the old end of a resized disk.

        A short last block is stored as a short chunk, and a block cut by a shrink keeps bytes
        past the new end. Without this, growing would read past the short chunk and a shrink
        followed by a growth would show the cut bytes again instead of zeros.
        """
        bs, keep = writer.block_size, min(parent.size, size)
        if keep % bs == 0:
            return
        block = keep // bs
        cid = self.blockmap.lookup(self.repo.map_root(parent), block, 1)[0]
        if cid is not None:
            data = self.chunks.load(cid)[: keep % bs]
            writer.write(block * bs, data.ljust(min(bs, size - block * bs), b"\0"))

    def __enter__(self) -> BackupWriter:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._done:
            self.abort()

"""Filling the file catalog after a backup: the file trees of every image's volumes.

A volume whose blocks are the same as in the parent image (compared by map node ids, no data
read) keeps the parent's listing; only volumes the backup changed are walked again, through
guestfs over the verified image reader. Failures here never fail the backup: they are
returned as warnings (the restore point is complete either way). A full disk is the one
exception: :class:`NoSpaceLeft` is raised, its message saying that the backup is complete.

The catalog is written after the backup is complete, so a run killed in between leaves a
restore point without its files. A backup whose catalog is done says so in its meta
(``BackupMeta.file_catalog``); cataloguing a backup first catches up the newest earlier
backups of the same VM that lack it (at most ``CATCH_UP``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import BinaryIO, cast

from vmaccel.catalog.filecatalog import FileRecord, attach_listing, listing_of, store_listing
from vmaccel.catalog.index import BackupRow, ImageRow
from vmaccel.catalog.repository import Repository
from vmaccel.guestfs.browse import BrowsedVolume, browse_disk
from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.filesystem import FileSystem
from vmaccel.vocabulary.errors import DamageError, NoSpaceLeft

logger = logging.getLogger(__name__)

CATCH_UP = 3  # earlier backups of the VM a run catalogues when a killed run left them without
MAX_FILES = 5_000_000  # a guard against hostile filesystems with endless directory loops
UNSTABLE_INODES = frozenset({"vfat"})  # fstypes whose inode numbers do not follow a file


def walk(fs: FileSystem) -> Iterator[FileRecord]:
    """Every entry below the root (depth first); unreadable entries are skipped. Inodes are
    kept where they identify a file across renames (not on FAT, whose numbers are directory
    entry offsets: a renamed FAT file is a removed one plus an added one)."""
    stable = fs.fstype not in UNSTABLE_INODES
    stack = ["/"]
    seen = 0
    while stack:
        parent = stack.pop()
        try:
            entries = fs.listdir(parent)
        except GuestFsError as exc:
            logger.warning("cannot list %s: %s", parent, exc)
            continue
        for st in entries:
            if st.error is not None:
                continue
            path = f"{parent.rstrip('/')}/{st.name}"
            seen += 1
            if seen > MAX_FILES:
                raise GuestFsError(f"more than {MAX_FILES} files: refusing to index further")
            inode = st.inode if stable else None
            yield FileRecord(path, st.kind, st.size, st.mtime_ns, inode, st.mode)
            if st.kind == "dir":
                stack.append(path)


def _unchanged(repo: Repository, img: ImageRow, parent: ImageRow, vol: BrowsedVolume) -> bool:
    if parent.size != img.size or parent.block_size != img.block_size:
        return False
    bs = img.block_size
    for ext in vol.volume.disk_extents:
        first, last = ext.offset // bs, -(-ext.end // bs)
        if not repo.same_blocks(img, parent, first, last - first):
            return False
    return True


def index_image(repo: Repository, img: ImageRow, parent: ImageRow | None) -> tuple[int, int]:
    """Catalog the files of one image; returns (volumes walked, volumes reused)."""
    walked = reused = 0
    with repo.open_image(img) as reader:
        for vol in browse_disk(cast(BinaryIO, reader), img.size):
            if vol.filesystem is None:
                continue
            prior = listing_of(repo.files, parent.id, vol.name) if parent else None
            if prior is not None and parent is not None and _unchanged(repo, img, parent, vol):
                listing, reused = prior, reused + 1
            else:
                records = list(walk(vol.filesystem))
                with repo.files.writing():
                    listing = store_listing(repo.files, records)
                walked += 1
            with repo.files.writing():
                attach_listing(repo.files, img.id, vol.name, vol.fstype, listing)
    return walked, reused


def index_backup(repo: Repository, backup: BackupRow) -> list[str]:
    """Catalog every image of ``backup``, after those of the newest earlier complete backups
    of its VM (at most ``CATCH_UP``) that an interrupted run left uncatalogued. Returns
    warnings (never raises for guest damage)."""
    earlier = [b for b in repo.backups(backup.vm) if b.id < backup.id][-CATCH_UP:]
    gaps = []
    for b in reversed(earlier):
        if b.meta.catalogued:
            break
        gaps.append(b)
    warnings = []
    for b in [*reversed(gaps), backup]:
        warnings += _index_one(repo, b)
    return warnings


def _index_one(repo: Repository, backup: BackupRow) -> list[str]:
    """Catalog every image of ``backup``, then mark it catalogued."""
    warnings = []
    for img in repo.images(backup):
        parent = repo.image_by_id(img.parent_id) if img.parent_id else None
        try:
            walked, reused = index_image(repo, img, parent)
            logger.info(
                "file catalog of %s: %d volumes walked, %d reused", img.disk, walked, reused
            )
        except (GuestFsError, DamageError) as exc:
            warnings.append(f"file catalog of {img.disk} incomplete: {exc}")
        except NoSpaceLeft as exc:  # the backup is committed: say so, not "nothing committed"
            raise NoSpaceLeft(
                f"backup {backup.id} of {backup.vm} is complete, but the file catalog of "
                f"{img.disk} could not be stored: no space left for the catalog index of "
                f"{repo.path}; free some space there (the next backup catalogs the files)"
            ) from exc
    repo.set_backup_meta(backup, replace(backup.meta, file_catalog=True))
    return warnings

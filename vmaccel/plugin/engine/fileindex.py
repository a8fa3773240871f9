"""Filling the file catalog after a backup: the file trees of every image's volumes.

A volume whose blocks are the same as in the parent image (compared by map node ids, no data
read) keeps the parent's listing. A volume the backup changed is *followed* where its
filesystem says where its metadata lives (ext4): the parent's listing, corrected where the
changed blocks hold a directory's entries or a file's inode (:mod:`.treewalk`); other volumes
are walked again whole, through guestfs over the verified image reader. Failures here never
fail the backup: they are returned as warnings (the restore point is complete either way).
A full disk is the one exception: :class:`NoSpaceLeft` is raised, its message saying that
the backup is complete.

The catalog is written after the backup is complete, so a run killed in between leaves a
restore point without its files. A backup whose catalog is done says so in its meta
(``BackupMeta.file_catalog``); cataloguing a backup first catches up the newest earlier
backups of the same VM that lack it (at most ``CATCH_UP``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import BinaryIO, cast

from vmaccel.catalog.filecatalog import FileRecord, attach_listing, listing_of, store_listing
from vmaccel.catalog.index import BackupRow, ImageRow
from vmaccel.catalog.repository import Repository
from vmaccel.guestfs.browse import BrowsedVolume, browse_disk
from vmaccel.guestfs.errors import GuestFsError
from vmaccel.plugin.engine.treewalk import (
    UNSTABLE_INODES,
    DeltaCounts,
    delta_walk,
    volume_touch,
    walk,
)
from vmaccel.vocabulary.errors import DamageError, NoSpaceLeft

logger = logging.getLogger(__name__)

CATCH_UP = 3  # earlier backups of the VM a run catalogues when a killed run left them without
# Readers of an image's metadata: browsing and walking read small blocks here and there, so
# no sequential read-ahead (it would decode up to 16 MiB past a partition table for nothing)
# and a small cache (the walk reads each metadata block a few times, close together).
METADATA_READER = {"readahead_bytes": 0, "cache_bytes": 4 << 20}


@dataclasses.dataclass
class VolumeCounts:
    """How the volumes of an image were catalogued: walked whole, followed from the parent's
    listing through the changed blocks (:func:`~.treewalk.delta_walk`), or reused as they
    were (no block of the volume changed)."""

    walked: int = 0
    followed: int = 0
    reused: int = 0


def _unchanged(repo: Repository, img: ImageRow, parent: ImageRow, vol: BrowsedVolume) -> bool:
    if parent.size != img.size or parent.block_size != img.block_size:
        return False
    bs = img.block_size
    for ext in vol.volume.disk_extents:
        first, last = ext.offset // bs, -(-ext.end // bs)
        if not repo.same_blocks(img, parent, first, last - first):
            return False
    return True


def index_image(
    repo: Repository, img: ImageRow, parent: ImageRow | None, delta: DeltaCounts | None = None
) -> VolumeCounts:
    """Catalog the files of one image (what the followed volumes took is added to
    ``delta``, if given)."""
    counts, delta = VolumeCounts(), delta if delta is not None else DeltaCounts()
    with repo.open_image(img, **METADATA_READER) as reader:
        for vol in browse_disk(cast(BinaryIO, reader), img.size):
            if vol.filesystem is None:
                continue
            prior = listing_of(repo.files, parent.id, vol.name) if parent else None
            if prior is not None and parent is not None and _unchanged(repo, img, parent, vol):
                listing = prior
                counts.reused += 1
            else:
                records = _records(repo, img, parent, vol, prior, (counts, delta))
                with repo.files.writing():
                    listing = store_listing(repo.files, records)
            with repo.files.writing():
                attach_listing(repo.files, img.id, vol.name, vol.fstype, listing)
    return counts


def _records(
    repo: Repository,
    img: ImageRow,
    parent: ImageRow | None,
    vol: BrowsedVolume,
    prior: int | None,
    tally: tuple[VolumeCounts, DeltaCounts],
) -> list[FileRecord]:
    """The volume's records: followed from the parent's listing where that is sound (same
    geometry, same metadata layout, a listing with inodes), else walked whole."""
    fs, (counts, done) = vol.filesystem, tally
    assert fs is not None  # noqa: S101 - the caller skips volumes without a filesystem
    placement = fs.placement() if fs.fstype not in UNSTABLE_INODES else None
    if placement is None or parent is None or prior is None or not _same_shape(img, parent):
        counts.walked += 1
        return list(walk(fs))
    try:
        same_layout = _parent_layout(repo, parent, vol) == placement.layout()
    except GuestFsError as exc:
        logger.info("%s: walking the whole tree (%s)", vol.name, exc)
        same_layout = False
    old = list(repo.files.listing_entries(prior)) if same_layout else []
    if not same_layout or any(r.inode is None for r in old):
        counts.walked += 1
        return list(walk(fs))
    changed = _changed_blocks(repo, img, parent, vol)
    touched = volume_touch(vol.volume, img.block_size, changed)
    before = dataclasses.replace(done)
    records = list(delta_walk(fs, placement, old, touched, done))
    logger.info("%s: %d directories listed again, %d entries read again, %d kept", vol.name,
                done.listed - before.listed, done.restated - before.restated,
                done.kept - before.kept)  # fmt: skip
    counts.followed += 1
    return records


def _same_shape(img: ImageRow, parent: ImageRow) -> bool:
    return parent.size == img.size and parent.block_size == img.block_size


def _changed_blocks(
    repo: Repository, img: ImageRow, parent: ImageRow, vol: BrowsedVolume
) -> list[int]:
    bs, changed = img.block_size, []
    for ext in vol.volume.disk_extents:
        first, last = ext.offset // bs, -(-ext.end // bs)
        changed += repo.differing_blocks(img, parent, first, last - first)
    return sorted(set(changed))


def _parent_layout(repo: Repository, parent: ImageRow, vol: BrowsedVolume) -> bytes | None:
    """The metadata layout of the same volume (same name and place) in the parent image."""
    with repo.open_image(parent, **METADATA_READER) as reader:
        for old in browse_disk(cast(BinaryIO, reader), parent.size):
            if old.name == vol.name and old.volume == vol.volume and old.filesystem:
                placement = old.filesystem.placement()
                return placement.layout() if placement else None
    return None


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
            n = index_image(repo, img, parent)
            logger.info("file catalog of %s: %d volumes walked, %d followed, %d reused",
                        img.disk, n.walked, n.followed, n.reused)  # fmt: skip
        except (GuestFsError, DamageError) as exc:
            warnings.append(f"file catalog of {img.disk} incomplete: {exc}")
        except NoSpaceLeft as exc:  # the backup is committed: say so, not "nothing committed"
            raise NoSpaceLeft(
                f"backup {backup.id} of {backup.vm} is complete, but the file catalog of "
                f"{img.disk} could not be stored: no space left for the catalog index of "
                f"{repo.path}; free some space there (the next backup catalogs the files)"
            ) from exc
    repo.set_backup_meta(backup, dataclasses.replace(backup.meta, file_catalog=True))
    return warnings

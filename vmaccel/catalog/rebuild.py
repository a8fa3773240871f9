"""rebuild-index: recreate the catalog index from the pack files and backup manifests alone.

The index is a cache (see :mod:`vmaccel.catalog.index`); the packs (each with a trailing index of
its chunks, and inline entry headers) and the manifests in ``<repo>/backups`` hold everything it
records about complete backups. A rebuild:

1. reads the config and opens the key first (a wrong passphrase changes nothing), then takes
   the maintenance lock, ``writers.lock`` (no backup may write under a lease) and the readers'
   lock exclusively (nobody may read or write an index being replaced);
2. builds a fresh index (migrations) as ``index.db.rebuilding``, beside the old one: every
   pack from its trailer, falling back to a scan of the inline entry headers when the trailer
   is damaged (reported; those packs are added last, so an intact copy of a chunk stored
   twice wins); then every backup and image from its manifest, keeping their ids (so image
   parents and the numbers users know stay valid), oldest first; and checks that each
   image's map nodes are present and readable (reported; the backup is restored regardless);
3. only then moves ``index.db`` (with its ``-wal``/``-shm``) aside as
   ``index.db.broken-<UTC time>`` (never deleted: it is user data, and evidence) and renames
   the new index into place. A crash before the switch leaves the old index in use and a
   partial ``index.db.rebuilding`` that the next rebuild discards: a half-built index is
   never live, so gc can never take packs it does not (yet) list for garbage.

On a PostgreSQL catalog the new catalog is built in a schema of its own beside the live one
and the two are switched in one transaction; the old tables are kept in a schema
``vmaccel_broken_<UTC time>`` (catalog.index.pgrebuild). The rebuild refuses while any other
session on any machine holds one of the catalog's locks.

No manifest is dropped: when two claim the same backup (or image) id, as after backups were
written against an index that was wrongly empty, the older keeps it and the newer gets a new
id, its manifest rewritten durably before the new index goes live (reported as renumbered).

What is lost: backups that were in progress or whose manifest is damaged, and the parts of
images whose map nodes or data chunks no pack holds; each is named in ``lost`` (the CLI exits
6 then). Run ``verify`` afterwards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vmaccel.catalog.blockmap import HOLE
from vmaccel.catalog.catalogdb import catalog_url
from vmaccel.catalog.config import RepositoryConfig
from vmaccel.catalog.damage import attribute
from vmaccel.catalog.durable import fsync_dir
from vmaccel.catalog.index import BackupRow, ImageRow
from vmaccel.catalog.key import MasterKey
from vmaccel.catalog.lock import FileLock
from vmaccel.catalog.manifest import write_manifest
from vmaccel.catalog.objectstore import ObjectStore
from vmaccel.catalog.pack import (
    HEADER_SIZE,
    PackEntry,
    ReadRange,
    check_header,
    read_index,
    scan_entries,
)
from vmaccel.catalog.repository import Passphrase, Repository, read_config, read_key
from vmaccel.catalog.storeconfig import open_store
from vmaccel.vocabulary.errors import DamageError, RepositoryLocked

logger = logging.getLogger(__name__)

_BUILDING = "index.db.rebuilding"


@dataclass(frozen=True)
class RebuildReport:
    """What a rebuild restored. ``moved_aside`` names the old index kept beside the new one.

    ``problems`` lists everything found wrong; ``lost`` is the part of it that could not be
    restored (unreadable manifests, backups whose map or data chunks are in no pack), each
    naming the backup. ``renumbered`` names backups given a new id because another manifest
    claimed theirs (their manifests were rewritten); they are restored, not lost.
    """

    packs: int
    chunks: int
    backups: int
    images: int
    moved_aside: str | None
    scanned_packs: tuple[str, ...]
    problems: tuple[str, ...]
    lost: tuple[str, ...] = ()
    renumbered: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def complete(self) -> bool:
        """True when nothing was lost: every manifest readable, every backup restored whole."""
        return not self.lost

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "complete": self.complete}

    def summary(self) -> list[str]:
        lines = [
            f"rebuilt the index: {self.packs} packs, {self.chunks} chunks, "
            f"{self.backups} backups, {self.images} images"
        ]
        if self.moved_aside:
            lines.append(f"the previous index is kept as {self.moved_aside}")
        lines += [f"renumbered: {r}" for r in self.renumbered]
        lines += [f"problem: {p}" for p in self.problems if p not in self.lost]
        lines += [f"NOT RESTORED: {p}" for p in self.lost]
        if self.problems:
            lines.append("run `vmaccel verify` to see what the problems affect")
        return lines


@dataclass
class _Found:
    """What a rebuild found so far; ``lose`` records a problem that is also a loss."""

    problems: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    renumbered: list[str] = field(default_factory=list)

    def lose(self, what: str) -> None:
        self.problems.append(what)
        self.lost.append(what)


def rebuild_index(path: Path, passphrase: Passphrase, lock_wait: float = 0.0) -> RebuildReport:
    """Rebuild the index of the repository at ``path`` (see the module docstring).

    Raises :class:`~vmaccel.vocabulary.errors.RepositoryLocked` when a writer or reader is active
    (after
    ``lock_wait`` seconds), :class:`~vmaccel.vocabulary.errors.PassphraseError` for a wrong
    passphrase. When it returns, the new index is durable and in place.
    """
    store = open_store(path)
    config = read_config(store, path)
    key = read_key(store, path, config, passphrase)
    lock = FileLock(path / "lock", exclusive=True, wait=lock_wait)
    lock.acquire()
    try:
        # writers.lock: no backup (lease holder) may run while the index is replaced.
        with (
            FileLock(path / "writers.lock", exclusive=True, wait=lock_wait),
            FileLock(path / "readers.lock", exclusive=True, wait=lock_wait, what="reader"),
        ):
            url = catalog_url(path)
            if url is not None:
                return _rebuild_postgres(path, url, lambda: _build(path, store, config, key, lock))
            _remove(path, _BUILDING)  # what an interrupted rebuild left: never user data
            report = _build(path, store, config, key, lock)
            moved = _move_aside(path)
            _rename(path, _BUILDING, "index.db")
            fsync_dir(path)
            return replace(report, moved_aside=moved)
    finally:
        lock.release()


def _build(
    path: Path, store: ObjectStore, config: RepositoryConfig, key: MasterKey | None,
    lock: FileLock,
) -> RebuildReport:  # fmt: skip
    """The new index, complete and closed: ``index.db.rebuilding`` on SQLite, the building
    schema on PostgreSQL (catalog.index.pgrebuild)."""
    repo = Repository(path, config, key, lock, path / _BUILDING, create_index=True, store=store)
    try:
        repo.index.migrate()
        return _rebuild(repo)
    finally:
        # Not repo.close(): that would drop the writer lock before the switch.
        repo.store.close()
        repo.index.close()


def _rebuild_postgres(
    path: Path, url: str, build: Callable[[], RebuildReport]
) -> RebuildReport:
    """The rebuild on a PostgreSQL catalog: under its maintenance session lock, refused
    while any other session holds a vmaccel lock (a backup, gc, a VM lock on any machine)."""
    from vmaccel.catalog.index import pgrebuild

    with pgrebuild.MaintenanceLock(url) as held:
        if pgrebuild.others_hold_locks(url, own=held.pid):
            raise RepositoryLocked(
                "the catalog is in use on some machine (a backup, gc or prune holds one of its"
                " locks): stop them, then rebuild"
            )
        report = build()
        moved = pgrebuild.switch(url)
    logger.warning("moved the old catalog tables aside to schema %s", moved)
    return replace(report, moved_aside=f"schema {moved}")


def _suffixed(name: str) -> list[tuple[str, str]]:
    return [(name + s, s) for s in ("", "-wal", "-shm")]


def _remove(path: Path, name: str) -> None:
    for f, _ in _suffixed(name):
        (path / f).unlink(missing_ok=True)


def _rename(path: Path, old: str, new: str) -> None:
    """Rename a database with its ``-wal`` and ``-shm`` files (they must keep matching names)."""
    for f, suffix in _suffixed(old):
        if (path / f).exists():
            (path / f).replace(path / (new + suffix))


def _move_aside(path: Path) -> str | None:
    """Rename the current index to ``index.db.broken-<UTC time>``; return the new name."""
    if not any((path / f).exists() for f, _ in _suffixed("index.db")):
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target, n = f"index.db.broken-{stamp}", 1
    while any((path / f).exists() for f, _ in _suffixed(target)):
        n += 1
        target = f"index.db.broken-{stamp}.{n}"
    _rename(path, "index.db", target)
    logger.warning("moved the old index aside as %s", target)
    return target


def _rebuild(repo: Repository) -> RebuildReport:
    found = _Found()
    packs, scanned = _add_packs(repo, found.problems)
    backups, images = _add_backups(repo, found)
    chunks = sum(n for n, _, _ in repo.index.chunk_totals_by_kind().values())
    logger.info("rebuilt index: %d packs, %d chunks, %d backups", packs, chunks, backups)
    return RebuildReport(
        packs, chunks, backups, images, None, tuple(scanned), tuple(found.problems),
        tuple(found.lost), tuple(found.renumbered),
    )  # fmt: skip


def _add_packs(repo: Repository, problems: list[str]) -> tuple[int, list[str]]:
    """Index every pack; returns (packs indexed, names of packs recovered by scanning)."""
    deferred: list[tuple[str, int, list[PackEntry]]] = []
    added = 0
    for name in repo.packs.names():
        size = repo.packs.size(name)
        read = _reader(repo, name)
        try:
            check_header(read(0, min(size, HEADER_SIZE)), repo.config.repo_id, name)
        except DamageError as exc:
            problems.append(f"{exc}; trying to recover its chunks anyway")
        try:
            entries = read_index(read, size, name)
        except DamageError as exc:
            entries = list(scan_entries(read, size))
            problems.append(f"{exc}; recovered {len(entries)} chunks from its entry headers")
            deferred.append((name, size, entries))
            continue
        _add_pack(repo, name, size, entries)
        added += 1
    for name, size, entries in deferred:  # after intact packs: their copies of a chunk win
        if entries:
            _add_pack(repo, name, size, entries)
            added += 1
        else:
            problems.append(f"pack {name}: no chunk could be recovered; it is not indexed")
    return added, [name for name, _, entries in deferred if entries]


def _reader(repo: Repository, name: str) -> ReadRange:
    return lambda offset, length: repo.packs.read(name, offset, length)


def _add_pack(repo: Repository, name: str, size: int, entries: list[PackEntry]) -> None:
    with repo.index.writing():
        repo.index.add_pack(name, size, repo.packs.mtime(name), entries)


def _add_backups(repo: Repository, found: _Found) -> tuple[int, int]:
    """Restore every readable manifest, oldest first; returns (backups, images) restored.

    On a PostgreSQL catalog the new catalog is built in a schema of its own beside the live one
and the two are switched in one transaction; the old tables are kept in a schema
``vmaccel_broken_<UTC time>`` (catalog.index.pgrebuild). The rebuild refuses while any other
session on any machine holds one of the catalog's locks.

No manifest is dropped: one whose backup or image ids an older manifest already claims
    (written against an index that was wrongly fresh) gets new ids, and its manifest is
    rewritten durably (atomically replaced: a crash leaves the old or the new document,
    never none) before the new index can go live, so the next rebuild finds no clash.
    """
    docs: list[tuple[BackupRow, list[ImageRow]]] = []
    for name in repo.manifest_names():
        try:
            docs.append(_parse_manifest(repo.read_manifest(name), name))
        except DamageError as exc:
            found.lose(f"{exc}; that backup is not restored")
    docs.sort(key=lambda d: (d[0].started, d[0].id))
    holders: dict[int, str] = {}  # backup id -> uuid of the first manifest claiming it
    nimages = 0
    for (old, old_images), (backup, images) in zip(docs, assign_ids(docs), strict=True):
        holders.setdefault(old.id, old.uuid)
        with repo.index.writing():
            repo.index.restore_backup(backup)
            for img in images:
                repo.index.restore_image(img)
        nimages += len(images)
        if (backup, images) != (old, old_images):
            write_manifest(repo.store, repo.codec, backup, images, replace=True)
            why = (
                f"its manifest claimed id {old.id}, which backup {holders[old.id]} holds"
                if backup.id != old.id
                else "other backups' images held its image ids"
            )
            found.renumbered.append(
                f"backup {backup.uuid} of {backup.vm}: {why}; it is now backup {backup.id} "
                "(manifest rewritten)"
            )
    _check_maps(repo, found)
    return len(docs), nimages


def assign_ids(
    docs: list[tuple[BackupRow, list[ImageRow]]],
) -> list[tuple[BackupRow, list[ImageRow]]]:
    """Backups and images with ids that are unique, given manifests oldest first.

    The first manifest to claim a backup id keeps it (with its image ids, so the numbers
    users know stay valid); a later claimant gets the next id above every claimed one, and
    so does each of its images whose id is taken. An image's ``parent_id`` follows its
    parent to the parent's final id: a parent is older than its child, so it is the latest
    earlier image that claimed that id (for backups written against a fresh index, their
    own generation's). Pure function; the result is in the order of ``docs``.
    """
    next_backup = max((b.id for b, _ in docs), default=0) + 1
    next_image = max((i.id for _, imgs in docs for i in imgs), default=0) + 1
    backups_used: set[int] = set()
    images_used: set[int] = set()
    latest: dict[int, int] = {}  # image id as a manifest wrote it -> its latest final id
    out: list[tuple[BackupRow, list[ImageRow]]] = []
    for backup, images in docs:
        bid = backup.id
        if bid in backups_used:
            bid, next_backup = next_backup, next_backup + 1
        new_images = []
        for img in images:
            iid = img.id
            if iid in images_used:
                iid, next_image = next_image, next_image + 1
            parent = None if img.parent_id is None else latest.get(img.parent_id, img.parent_id)
            new_images.append(replace(img, id=iid, backup_id=bid, parent_id=parent))
            images_used.add(iid)
        for img, new in zip(images, new_images, strict=True):
            latest[img.id] = new.id
        backups_used.add(bid)
        out.append((replace(backup, id=bid), new_images))
    return out


def _parse_manifest(doc: dict[str, Any], name: str) -> tuple[BackupRow, list[ImageRow]]:
    try:
        backup = BackupRow.from_json(doc["backup"])
        images = [ImageRow.from_json(i) for i in doc["images"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise DamageError(f"manifest {name} is incomplete: {exc}") from exc
    if backup.uuid != name or any(i.backup_id != backup.id for i in images):
        raise DamageError(f"manifest {name} does not describe backup {name}")
    return backup, images


def _check_maps(repo: Repository, found: _Found) -> None:
    """Read every restored image's map nodes once (shared subtrees once), then check that
    every data chunk their leaves name is indexed; name each image that lacks something."""
    seen: set[bytes] = set()
    data: set[bytes] = set()
    images: list[tuple[BackupRow, ImageRow]] = []
    for backup in repo.backups():
        for img in repo.images(backup):
            images.append((backup, img))
            where = f"backup {backup.id} ({backup.uuid}) {backup.vm}/{img.disk}"
            if img.root is not None and not repo.index.has_chunk(img.root):
                found.lose(f"{where}: its map root {img.root.hex()} is in no pack")
                continue
            try:
                for node_id, level in repo.blockmap.iter_nodes(repo.map_root(img), seen):
                    if level == 0:
                        entries = repo.blockmap.node(node_id, img.fanout)[1]
                        data.update(e for e in entries if e != HOLE)
            except DamageError as exc:
                found.lose(f"{where}: its map is damaged: {exc}")
    missing = repo.index.missing_chunks(data)
    if missing:
        for a in attribute(repo, images, missing)[1]:
            size = sum(r.length for r in a.ranges)
            found.lose(
                f"backup {a.backup_id} ({a.backup_uuid}) {a.vm}/{a.disk}: {size} bytes in "
                f"{len(a.ranges)} range(s) name {len(a.chunks)} data chunk(s) that are in no pack"
            )

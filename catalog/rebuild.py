"""rebuild-index: recreate the catalog index from the pack files and backup manifests alone.

The index is a cache (see :mod:`catalog.index`); the packs (each with a trailing index of its
chunks, and inline entry headers) and the manifests in ``<repo>/backups`` hold everything it
records about complete backups. A rebuild:

1. reads the config and opens the key first (a wrong passphrase changes nothing), then takes
   the writer lock and the readers' lock exclusively (nobody may read an index being replaced);
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

What is lost: backups that were in progress or whose manifest is damaged (reported), and
chunks of packs whose bytes are beyond repair. Run ``verify`` afterwards.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from catalog.config import RepositoryConfig
from catalog.durable import fsync_dir
from catalog.errors import DamageError, RepositoryNotFound
from catalog.index import BackupRow, ImageRow
from catalog.lock import FileLock
from catalog.manifest import decode_manifest
from catalog.pack import (
    HEADER_SIZE,
    PackEntry,
    ReadRange,
    check_header,
    read_index,
    scan_entries,
)
from catalog.repository import Passphrase, Repository, read_key

logger = logging.getLogger(__name__)

_BUILDING = "index.db.rebuilding"


@dataclass(frozen=True)
class RebuildReport:
    """What a rebuild restored. ``moved_aside`` names the old index kept beside the new one."""

    packs: int
    chunks: int
    backups: int
    images: int
    moved_aside: str | None
    scanned_packs: tuple[str, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> list[str]:
        lines = [
            f"rebuilt the index: {self.packs} packs, {self.chunks} chunks, "
            f"{self.backups} backups, {self.images} images"
        ]
        if self.moved_aside:
            lines.append(f"the previous index is kept as {self.moved_aside}")
        lines += [f"problem: {p}" for p in self.problems]
        if self.problems:
            lines.append("run `vmaccel verify` to see what the problems affect")
        return lines


def rebuild_index(path: Path, passphrase: Passphrase, lock_wait: float = 0.0) -> RebuildReport:
    """Rebuild the index of the repository at ``path`` (see the module docstring).

    Raises :class:`~catalog.errors.RepositoryLocked` when a writer or reader is active (after
    ``lock_wait`` seconds), :class:`~catalog.errors.PassphraseError` for a wrong passphrase.
    When it returns, the new index is durable and in place.
    """
    if not (path / "config").is_file():
        raise RepositoryNotFound(f"no vmaccel repository at {path}")
    config = RepositoryConfig.from_json((path / "config").read_text(), str(path / "config"))
    key = read_key(path, config, passphrase)
    lock = FileLock(path / "lock", exclusive=True, wait=lock_wait)
    lock.acquire()
    try:
        with FileLock(path / "readers.lock", exclusive=True, wait=lock_wait, what="reader"):
            _remove(path, _BUILDING)  # what an interrupted rebuild left: never user data
            repo = Repository(path, config, key, lock, index_path=path / _BUILDING)
            try:
                repo.index.migrate()
                report = _rebuild(repo)
            finally:
                # Not repo.close(): that would drop the writer lock before the switch below.
                repo.packs.close()
                repo.index.close()
            moved = _move_aside(path)
            _rename(path, _BUILDING, "index.db")
            fsync_dir(path)
            return replace(report, moved_aside=moved)
    finally:
        lock.release()


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
    problems: list[str] = []
    packs, scanned = _add_packs(repo, problems)
    backups, images = _add_backups(repo, problems)
    chunks = sum(n for n, _, _ in repo.index.chunk_totals_by_kind().values())
    logger.info("rebuilt index: %d packs, %d chunks, %d backups", packs, chunks, backups)
    return RebuildReport(packs, chunks, backups, images, None, tuple(scanned), tuple(problems))


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
            with repo.packs.open(name) as stream:
                entries = list(scan_entries(stream, size))
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
    with repo.index.transaction():
        repo.index.add_pack(name, size, repo.packs.mtime(name), entries)


def _add_backups(repo: Repository, problems: list[str]) -> tuple[int, int]:
    """Restore backups from manifests, oldest first; returns (backups, images) restored."""
    docs: list[tuple[BackupRow, list[ImageRow]]] = []
    for name in repo.manifest_names():
        try:
            data = (repo.path / "backups" / name).read_bytes()
            docs.append(_parse_manifest(decode_manifest(repo.codec, data, name), name))
        except DamageError as exc:
            problems.append(f"{exc}; that backup is not restored")
    docs.sort(key=lambda d: (d[0].started, d[0].id))
    ids: set[int] = set()
    nimages = 0
    for backup, images in docs:
        if backup.id in ids:
            problems.append(f"manifest {backup.uuid} reuses backup id {backup.id}; not restored")
            continue
        ids.add(backup.id)
        with repo.index.transaction():
            repo.index.restore_backup(backup)
            for img in images:
                repo.index.restore_image(img)
        nimages += len(images)
    _check_maps(repo, problems)
    return len(ids), nimages


def _parse_manifest(doc: dict[str, Any], name: str) -> tuple[BackupRow, list[ImageRow]]:
    try:
        backup = BackupRow(**doc["backup"])
        images = [
            ImageRow(**{**i, "root": bytes.fromhex(i["root"]) if i["root"] else None})
            for i in doc["images"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise DamageError(f"manifest {name} is incomplete: {exc}") from exc
    if backup.uuid != name or any(i.backup_id != backup.id for i in images):
        raise DamageError(f"manifest {name} does not describe backup {name}")
    return backup, images


def _check_maps(repo: Repository, problems: list[str]) -> None:
    """Read every restored image's map nodes once (shared subtrees once)."""
    seen: set[bytes] = set()
    for backup in repo.index.backups():
        for img in repo.index.images(backup.id):
            if img.root is not None and not repo.index.has_chunk(img.root):
                problems.append(
                    f"backup {backup.id} ({backup.uuid}) {backup.vm}/{img.disk}: its map root "
                    f"{img.root.hex()} is in no pack"
                )
                continue
            try:
                for _ in repo.blockmap.iter_nodes(repo.map_root(img), seen):
                    pass
            except DamageError as exc:
                problems.append(
                    f"backup {backup.id} ({backup.uuid}) {backup.vm}/{img.disk}: "
                    f"its map is damaged: {exc}"
                )

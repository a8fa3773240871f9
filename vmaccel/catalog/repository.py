"""The repository: one directory holding the catalog index, the packs and the manifests.

Layout (the objects -- config, key, packs, manifests -- are read and written only through
the object store, catalog.objectstore, here the directory store of catalog.localstore; the
index and the lock files are local files of their own)::

    config          object: settings and format version (see catalog.config), written once
    key             object: the wrapped master key (repokey repositories only), mode 0600
    index.db        the SQLite catalog (WAL mode); catalog.json instead names a PostgreSQL
                    one (catalog.catalogdb), which many machines may share
    packs/          objects: pack files (see catalog.pack), named by catalog.packstore;
                    packs/tmp/ holds the store's staged uploads
    backups/        objects: one manifest per complete backup (see catalog.manifest)
    lock            maintenance (gc, prune, rebuild-index, ...): exclusive flock
    writers.lock    backups share it; rebuild-index takes it exclusively (it replaces the index)
    readers.lock    readers and backups share it; gc takes it exclusively to delete pack files
    leases/         one lock file per writer lease, and per-VM backup locks (catalog.lease)
    store.json      only when the objects live in S3 (catalog.storeconfig): then config, key,
                    packs/ and backups/ are in the bucket, with staging/, cache/ and locks.json
                    here
    reserve         RESERVE_BYTES of space only gc may use: on a full disk gc releases it to
                    commit its first deletions (SQLite needs room for its WAL), and a writer
                    recreates it when there is room

Open with :meth:`Repository.open` as a context manager: read-only (the default),
``write=True`` for maintenance (the exclusive ``lock``), or ``lease="backup"`` for a backup
(a writer lease beside other backups and gc; see catalog.lease).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from types import TracebackType
from typing import Any

from vmaccel.catalog.backup import BackupWriter
from vmaccel.catalog.blockmap import BlockMap, MapRoot
from vmaccel.catalog.catalogdb import HeldLock, create_catalog, open_index, shared_lock, with_shared
from vmaccel.catalog.chunkstore import ChunkStore
from vmaccel.catalog.codec import ChunkCodec
from vmaccel.catalog.config import OBJECT as CONFIG_OBJECT
from vmaccel.catalog.config import RepositoryConfig, load_config, save_config
from vmaccel.catalog.durable import create_private_file, fsync_dir
from vmaccel.catalog.filecatalog import FileHit, find_files
from vmaccel.catalog.imagereader import ImageReader
from vmaccel.catalog.index import (
    BackupMeta,
    BackupRow,
    CatalogIndex,
    FileIndex,
    ImageRow,
)
from vmaccel.catalog.key import OBJECT as KEY_OBJECT
from vmaccel.catalog.key import MasterKey, save_key, unwrap_key
from vmaccel.catalog.lease import Lease, vm_lock
from vmaccel.catalog.localstore import LocalObjectStore
from vmaccel.catalog.lock import FileLock
from vmaccel.catalog.manifest import PREFIX as MANIFESTS
from vmaccel.catalog.manifest import (
    delete_manifest,
    manifest_names,
    read_manifest,
    write_manifest,
)
from vmaccel.catalog.objectstore import ObjectMissing, ObjectStore
from vmaccel.catalog.packstore import PREFIX as PACKS
from vmaccel.catalog.packstore import PackStore
from vmaccel.catalog.reserve import RESERVE_BYTES as RESERVE_BYTES
from vmaccel.catalog.reserve import ensure_reserve, release_reserve
from vmaccel.catalog.storeconfig import FILE as STORE_FILE
from vmaccel.catalog.storeconfig import StoreSpec, open_store, prepare_store
from vmaccel.vocabulary.errors import (
    BackupNotFound,
    ImageNotFound,
    PassphraseError,
    RepositoryError,
    RepositoryExists,
    RepositoryNotFound,
    UsageError,
)

logger = logging.getLogger(__name__)

Passphrase = str | Callable[[], str] | None
READER_LOCK_WAIT = 60.0  # seconds a reader waits for gc to finish deleting pack files


def _passphrase(p: Passphrase) -> str:
    value = p() if callable(p) else p
    if not value:
        raise PassphraseError(
            "this repository is encrypted: set VMACCEL_PASSPHRASE or enter the passphrase"
        )
    return value


def read_config(store: ObjectStore, path: Path) -> RepositoryConfig:
    """The configuration of the repository at ``path`` (whose objects ``store`` holds)."""
    try:
        return load_config(store, str(path / "config"))
    except ObjectMissing:
        raise RepositoryNotFound(
            f"no vmaccel repository at {path} (run `vmaccel repo init`)"
        ) from None


def read_key(
    store: ObjectStore, path: Path, config: RepositoryConfig, passphrase: Passphrase
) -> MasterKey | None:
    """The master key of the repository at ``path`` (None when it is not encrypted)."""
    if not config.encrypted:
        return None
    try:
        data = store.get(KEY_OBJECT)
    except ObjectMissing:
        raise RepositoryError(
            f"{path}/key is missing: the repository cannot be decrypted"
        ) from None
    return unwrap_key(data, _passphrase(passphrase), config.repo_id)


def _holds(store: ObjectStore, key: str) -> bool:
    try:
        store.stat(key)
    except ObjectMissing:
        return False
    return True


class Repository:
    def __init__(
        self,
        path: Path,
        config: RepositoryConfig,
        key: MasterKey | None,
        lock: FileLock,
        index_path: Path | None = None,
        create_index: bool = False,
        store: ObjectStore | None = None,
        held: tuple[FileLock, ...] = (),
        lock_wait: float = 0.0,
    ) -> None:
        """``lock`` is the repository lock this object holds (released by :meth:`close`, as
        are the locks in ``held``); ``lock_wait`` the seconds :meth:`vm_lock` waits.
        ``index_path`` (default ``<path>/index.db``) lets rebuild-index build a new index
        beside the old one and switch them only when it is complete. Only rebuild-index
        passes ``create_index=True``; otherwise a missing or empty index raises
        :class:`~vmaccel.vocabulary.errors.IndexMissing` (see
        :class:`~vmaccel.catalog.index.Index`). ``store`` holds the repository's objects
        (default: the directory store at ``path``); the repository closes it."""
        self.path, self.config, self._locks = path, config, (*held, lock)
        self._lock_wait = lock_wait
        self.store: ObjectStore = store if store is not None else LocalObjectStore(path)
        self.maintenance = lock.exclusive  # holds the exclusive maintenance lock
        self.writable = lock.exclusive  # may write backups (maintenance, or a lease below)
        self.lease: Lease | None = None
        self._shared: AbstractContextManager[Any] = nullcontext()  # catalogdb.shared_lock
        level = config.compression_level if config.compression == "zstd" else None
        self.codec = ChunkCodec(level, key)
        index_file = index_path or path / "index.db"
        self.index: CatalogIndex = open_index(path, index_file, create_index)
        self.packs = PackStore(self.store)
        self.chunks = ChunkStore(
            self.index, self.packs, self.codec, config.repo_id, config.pack_size
        )
        self.blockmap = BlockMap(self.chunks)

    # -- lifecycle --------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        path: Path,
        config: RepositoryConfig,
        passphrase: Passphrase = None,
        store_spec: StoreSpec | None = None,
        catalog: str | None = None,
    ) -> None:
        """Create an empty repository at ``path``: a new directory, or an existing empty one
        (anything in it, a repository or not, raises :class:`RepositoryExists` before anything
        is written). Every directory is made 0700 and every file 0600, whatever the umask.
        With ``store_spec`` the objects go to S3 (catalog.storeconfig), the rest stays in
        ``path``; with ``catalog`` (a postgresql:// URL) the index is that database."""
        if _holds(LocalObjectStore(path), CONFIG_OBJECT) or (path / STORE_FILE).exists():
            raise RepositoryExists(f"{path} already holds a vmaccel repository")
        if path.exists() and not path.is_dir():
            raise RepositoryExists(f"{path} exists and is not a directory; choose another path")
        if path.exists() and any(path.iterdir()):
            raise RepositoryExists(f"{path} exists and is not empty; choose an empty directory")
        # Asked before anything is written: a refused or mistyped passphrase leaves no
        # half-made directory that would block the next try.
        secret = _passphrase(passphrase) if config.encrypted else None
        path.parent.mkdir(parents=True, exist_ok=True)  # the user's directories: their modes
        store = prepare_store(path, store_spec, (PACKS, MANIFESTS))  # dirs 0700 (path too)
        # The index and the lock files exist before SQLite or flock see them: they keep 0600.
        for name in ("index.db", "lock", "writers.lock", "readers.lock")[bool(catalog) :]:
            os.close(create_private_file(path / name))
        if secret is not None:
            save_key(store, MasterKey.generate(), secret, config.repo_id)
        if catalog is not None:
            create_catalog(path, catalog)
        index = open_index(path, path / "index.db", create=catalog is None)
        index.migrate()
        index.close()
        # The config object is written last: a directory without it is not a repository yet.
        save_config(store, config)
        fsync_dir(path.parent)

    @classmethod
    def open(
        cls,
        path: Path,
        passphrase: Passphrase = None,
        write: bool = False,
        lock_wait: float = 0,
        use_reserve: bool = False,
        lease: str | None = None,
    ) -> Repository:
        """Open the repository at ``path``: read-only (sharing ``readers.lock``), or with
        ``write=True`` for maintenance (the exclusive ``lock``: gc, prune, rebuild-index and
        anything else that is not a backup), or with ``lease="backup"`` (what the lease is
        for) as a backup writer: ``writers.lock`` and ``readers.lock`` shared and a writer
        lease (catalog.lease), so backups run beside each other and beside gc and prune.
        ``lock_wait``: seconds to wait for a conflicting holder
        (:class:`~vmaccel.vocabulary.errors.RepositoryLocked` after that).

        ``use_reserve`` (gc only, with ``write``): delete the space reserve before opening the
        index, so that gc can start on a disk too full for SQLite to open its index.

        Never creates an index: a missing or empty ``index.db`` raises
        :class:`~vmaccel.vocabulary.errors.IndexMissing`, an unreadable one
        :class:`~vmaccel.vocabulary.errors.IndexCorrupt` (both exit 6; ``repo rebuild-index``
        repairs them). A writer applies pending migrations only to an index that has its schema.
        """
        if write and lease:
            raise UsageError("open a repository either for maintenance (write) or with a lease")
        store = open_store(path)
        config = read_config(store, path)
        key = read_key(store, path, config, passphrase)
        if lease:
            return cls._open_leased(path, config, key, store, lease, lock_wait)
        # gc holds readers.lock exclusively only while it deletes pack files: readers wait.
        wait = lock_wait if write else max(lock_wait, READER_LOCK_WAIT)
        lock = FileLock(path / ("lock" if write else "readers.lock"), exclusive=write, wait=wait)
        lock.acquire()
        try:
            if write and use_reserve:
                release_reserve(path)
            repo = cls(path, config, key, lock, store=store, lock_wait=lock_wait)
            if write:
                repo._shared = shared_lock(repo.index, "maintenance", "maintenance run", wait)
                repo._shared.__enter__()  # released by close(), after the index is closed
                repo.index.migrate()
                if not use_reserve:
                    repo.ensure_reserve()
        except BaseException:
            lock.release()
            raise
        return repo

    @classmethod
    def _open_leased(
        cls,
        path: Path,
        config: RepositoryConfig,
        key: MasterKey | None,
        store: ObjectStore,
        what: str,
        lock_wait: float,
    ) -> Repository:
        """See :meth:`open` (``lease``). Order: ``writers.lock`` shared (rebuild-index holds
        it exclusively), ``readers.lock`` shared (gc deletes pack files only without readers:
        a backup reads its parents' map nodes), pending migrations under the maintenance lock,
        then the lease."""
        writers = FileLock(path / "writers.lock", exclusive=False, wait=lock_wait, what="writer")
        readers = FileLock(
            path / "readers.lock", exclusive=False, wait=max(lock_wait, READER_LOCK_WAIT)
        )
        writers.acquire()
        try:
            readers.acquire()
        except BaseException:
            writers.release()
            raise
        try:
            repo = cls(path, config, key, readers, store=store, held=(writers,),
                       lock_wait=lock_wait)  # fmt: skip
        except BaseException:
            readers.release()
            writers.release()
            raise
        try:
            if repo.index.pending_migrations():
                # Migrations change the schema: one migrator at a time, never beside gc.
                with FileLock(path / "lock", exclusive=True, wait=lock_wait):
                    repo.index.migrate()
            repo.lease = Lease(path, repo.index, what)
            repo.lease.acquire()
            repo.writable = True
            repo.ensure_reserve()
        except BaseException:
            repo.close()
            raise
        return repo

    def close(self) -> None:
        """Drop the open pack (if writing), release the lease, close the index and the object
        store, release the locks. The lease goes before the locks."""
        try:
            if self.writable:
                self.chunks.abort()
            if self.lease is not None:
                self.lease.release()
        finally:
            self.store.close()
            self.index.close()
            self._shared.__exit__(None, None, None)
            for lock in reversed(self._locks):
                lock.release()

    def vm_lock(self, vm: str) -> HeldLock:
        """The lock (to take as a context manager) that a backup of VM ``vm`` holds from
        choosing its parents until its backup and file-catalog work are committed: two
        backups of one VM never run at once (the second waits the ``lock_wait`` of
        :meth:`open`, then raises :class:`~vmaccel.vocabulary.errors.RepositoryLocked`)."""
        local, what = vm_lock(self.path, vm, self._lock_wait), f"writer backing up {vm!r}"
        return with_shared(self.index, local, f"vm:{vm}", what, self._lock_wait)

    def __enter__(self) -> Repository:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- space ----------------------------------------------------------------------------------

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer may still use on the repository's filesystem
        (``f_bavail``: root may have more, e.g. ext4's root reserve, but never the blocks the
        filesystem keeps for itself). Metadata makes the real figure a little smaller."""
        st = os.statvfs(self.path)
        return int(st.f_bavail * st.f_frsize)

    def ensure_reserve(self) -> bool:
        """Create the ``reserve`` file when it is missing and there is room (see
        :func:`vmaccel.catalog.reserve.ensure_reserve`); returns whether it exists."""
        return ensure_reserve(self.path, self.free_bytes())

    def reserve_bytes(self) -> int:
        """Bytes the ``reserve`` file holds on disk (0 when there is none)."""
        try:
            return int((self.path / "reserve").stat().st_blocks * 512)
        except FileNotFoundError:
            return 0

    def release_reserve(self) -> int:
        """Delete the ``reserve`` file (gc, on a full disk); returns the bytes it held."""
        return release_reserve(self.path)

    def readers_lock(self) -> FileLock:
        """The lock readers share; gc takes it exclusively before deleting pack files."""
        return FileLock(self.path / "readers.lock", exclusive=True, what="reader")

    # -- backups and images -----------------------------------------------------------------

    def backups(self, vm: str | None = None, state: str | None = "complete") -> list[BackupRow]:
        return self.index.backups(vm, state)

    def backup(self, ref: int | str) -> BackupRow:
        """A complete backup by numeric id or uuid."""
        row = (
            self.index.backup(int(ref))
            if str(ref).isdigit()
            else self.index.backup_by_uuid(str(ref))
        )
        if row is None or row.state != "complete":
            raise BackupNotFound(f"no complete backup {ref!r} in {self.path}")
        return row

    def images(self, backup: BackupRow | int) -> list[ImageRow]:
        """The images of ``backup`` (a row or its id), by disk name."""
        return self.index.images(backup if isinstance(backup, int) else backup.id)

    def image_by_id(self, image_id: int) -> ImageRow | None:
        """The image ``image_id``, of a backup in any state (None when it is gone)."""
        return self.index.image(image_id)

    def same_blocks(self, a: ImageRow, b: ImageRow, first: int, count: int) -> bool:
        """Whether ``count`` blocks from block ``first`` are the same chunks in both images
        (compared by map node ids: no data read)."""
        return self.blockmap.same_range(self.map_root(a), self.map_root(b), first, count)

    def differing_blocks(self, a: ImageRow, b: ImageRow, first: int, count: int) -> list[int]:
        """The blocks of ``first .. first+count-1`` whose chunks differ between the images,
        ascending (by map node ids: no data read; cost follows the change, not the disk)."""
        return list(self.blockmap.differing(self.map_root(a), self.map_root(b), first, count))

    def set_backup_meta(self, backup: BackupRow, meta: BackupMeta) -> BackupRow:
        """Replace the meta of complete ``backup`` (needs the writer lock); returns the row."""
        with self.index.writing():
            self.index.set_backup_meta(backup.id, meta)
        return dataclasses.replace(backup, meta=meta)

    @property
    def files(self) -> FileIndex:
        """The file catalog of this repository (its part of the index seam)."""
        return self.index

    def find_files(self, pattern: str, vm: str | None = None, limit: int = 1000) -> list[FileHit]:
        """Files of complete backups whose path matches the glob ``pattern`` (see
        :func:`vmaccel.catalog.filecatalog.find_files`), oldest backup first."""
        return find_files(self.index, pattern, vm, limit)

    def latest_images(
        self, vm: str, instance_uuid: str | None = None, disks: Iterable[str] | None = None
    ) -> dict[str, ImageRow]:
        """Disk name -> the image of the newest complete backup of ``vm`` that holds that disk
        (the parents of the next backup). With ``instance_uuid``, backups of another VM that
        had the same name are passed over (backups that recorded no instance uuid count).
        With ``disks``, only those are looked for, and the walk back through the VM's
        backups stops once each is found (usually at the newest backup)."""
        wanted = None if disks is None else set(disks)
        latest: dict[str, ImageRow] = {}
        for backup in reversed(self.backups(vm)):
            if wanted is not None and wanted <= latest.keys():
                break
            if instance_uuid and backup.meta.instance_uuid not in (None, instance_uuid):
                continue
            for img in self.images(backup):
                if wanted is None or img.disk in wanted:
                    latest.setdefault(img.disk, img)
        return latest

    def image(self, backup: BackupRow, disk: str) -> ImageRow:
        for img in self.images(backup):
            if img.disk == disk:
                return img
        raise ImageNotFound(f"backup {backup.id} of {backup.vm} has no disk {disk!r}")

    def map_root(self, image: ImageRow) -> MapRoot:
        blocks = (image.size + image.block_size - 1) // image.block_size
        return MapRoot(image.root, image.depth, image.fanout, blocks)

    def open_image(self, image: ImageRow, **options: int) -> ImageReader:
        """A verified, seekable reader of one image (see :class:`ImageReader` options)."""
        return ImageReader(
            self.chunks,
            self.blockmap,
            self.map_root(image),
            image.size,
            image.block_size,
            **options,
        )

    def write_manifest(self, backup: BackupRow) -> None:
        """Store the manifest of ``backup`` with its images as the index has them (durably;
        :class:`~vmaccel.catalog.objectstore.ObjectExists` when it has one already)."""
        write_manifest(self.store, self.codec, backup, self.index.images(backup.id))

    def read_manifest(self, uuid: str) -> dict[str, Any]:
        """The manifest document of backup ``uuid`` (a DamageError when missing/unreadable)."""
        return read_manifest(self.store, self.codec, uuid)

    def delete_manifest(self, backup: BackupRow) -> None:
        delete_manifest(self.store, backup.uuid)

    def manifest_names(self) -> list[str]:
        """The uuids of every stored manifest, sorted."""
        return manifest_names(self.store)

    def begin_backup(
        self, vm: str, meta: BackupMeta | Mapping[str, Any] | None = None
    ) -> BackupWriter:
        """Start a backup of ``vm`` (needs the writer lock); ``meta`` as a record or as its
        JSON object (see :class:`~vmaccel.catalog.index.meta.BackupMeta`)."""
        if not isinstance(meta, BackupMeta):
            meta = BackupMeta.from_json(meta or {})
        return BackupWriter(self, vm, meta)

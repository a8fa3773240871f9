"""The repository: one directory holding the catalog index, the packs and the manifests.

Layout::

    config          settings and format version (see catalog.config), written once
    key             the wrapped master key (repokey repositories only), mode 0600
    index.db        the SQLite catalog (WAL mode)
    packs/          pack files (see catalog.pack), behind catalog.packstore
    backups/        one manifest per complete backup (see catalog.manifest)
    lock            writers' exclusive flock;  readers.lock: readers' shared flock

Open with :meth:`Repository.open` as a context manager; ``write=True`` takes the writer lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from catalog.backup import BackupWriter
from catalog.blockmap import BlockMap, MapRoot
from catalog.chunkstore import ChunkStore
from catalog.codec import ChunkCodec
from catalog.config import RepositoryConfig
from catalog.durable import fsync_dir, write_file_durably
from catalog.errors import (
    BackupNotFound,
    ImageNotFound,
    PassphraseError,
    RepositoryError,
    RepositoryExists,
    RepositoryNotFound,
)
from catalog.imagereader import ImageReader
from catalog.index import BackupRow, ImageRow, Index
from catalog.key import MasterKey, unwrap_key, wrap_key
from catalog.lock import FileLock
from catalog.manifest import delete_manifest, write_manifest
from catalog.packstore import LocalPackStore

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


def read_key(path: Path, config: RepositoryConfig, passphrase: Passphrase) -> MasterKey | None:
    """The master key of the repository at ``path`` (None when it is not encrypted)."""
    if not config.encrypted:
        return None
    try:
        data = (path / "key").read_bytes()
    except FileNotFoundError:
        raise RepositoryError(
            f"{path}/key is missing: the repository cannot be decrypted"
        ) from None
    return unwrap_key(data, _passphrase(passphrase), config.repo_id)


class Repository:
    def __init__(
        self,
        path: Path,
        config: RepositoryConfig,
        key: MasterKey | None,
        lock: FileLock,
        index_path: Path | None = None,
    ) -> None:
        """``index_path`` (default ``<path>/index.db``) lets rebuild-index build a new index
        beside the old one and switch them only when it is complete."""
        self.path, self.config, self._lock = path, config, lock
        self.writable = lock.exclusive
        level = config.compression_level if config.compression == "zstd" else None
        self.codec = ChunkCodec(level, key)
        self.index = Index(index_path or path / "index.db")
        self.packs = LocalPackStore(path / "packs")
        self.chunks = ChunkStore(
            self.index, self.packs, self.codec, config.repo_id, config.pack_size
        )
        self.blockmap = BlockMap(self.chunks)

    # -- lifecycle --------------------------------------------------------------------------

    @classmethod
    def init(cls, path: Path, config: RepositoryConfig, passphrase: Passphrase = None) -> None:
        """Create an empty repository at ``path`` (which must not hold one already)."""
        if (path / "config").exists():
            raise RepositoryExists(f"{path} already holds a vmaccel repository")
        if path.exists() and any(path.iterdir()):
            raise RepositoryExists(f"{path} exists and is not empty; choose an empty directory")
        path.mkdir(parents=True, exist_ok=True)
        for sub in ("packs", "backups"):
            (path / sub).mkdir(exist_ok=True)
        if config.encrypted:
            key = MasterKey.generate()
            write_file_durably(
                path / "key", wrap_key(key, _passphrase(passphrase), config.repo_id), 0o600
            )
        index = Index(path / "index.db")
        index.migrate()
        index.close()
        # The config file is written last: a directory without it is not a repository yet.
        write_file_durably(path / "config", config.to_json().encode())
        fsync_dir(path.parent)

    @classmethod
    def open(
        cls, path: Path, passphrase: Passphrase = None, write: bool = False, lock_wait: float = 0
    ) -> Repository:
        if not (path / "config").is_file():
            raise RepositoryNotFound(f"no vmaccel repository at {path} (run `vmaccel repo init`)")
        config = RepositoryConfig.from_json((path / "config").read_text(), str(path / "config"))
        key = read_key(path, config, passphrase)
        # gc holds readers.lock exclusively only while it deletes pack files: readers wait.
        wait = lock_wait if write else max(lock_wait, READER_LOCK_WAIT)
        lock = FileLock(path / ("lock" if write else "readers.lock"), exclusive=write, wait=wait)
        lock.acquire()
        try:
            repo = cls(path, config, key, lock)
            if write:
                repo.index.migrate()
        except BaseException:
            lock.release()
            raise
        return repo

    def close(self) -> None:
        if self.writable:
            self.chunks.abort()
        self.packs.close()
        self.index.close()
        self._lock.release()

    def __enter__(self) -> Repository:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

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

    def images(self, backup: BackupRow) -> list[ImageRow]:
        return self.index.images(backup.id)

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
        write_manifest(self.path / "backups", self.codec, backup, self.index.images(backup.id))

    def delete_manifest(self, backup: BackupRow) -> None:
        delete_manifest(self.path / "backups", backup.uuid)

    def manifest_names(self) -> list[str]:
        d = self.path / "backups"
        return (
            sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) if d.is_dir() else []
        )

    def begin_backup(self, vm: str, meta: Mapping[str, Any] | None = None) -> BackupWriter:
        return BackupWriter(self, vm, dict(meta or {}))

"""Moving a repository to S3 and PostgreSQL (``vmaccel repo migrate DEST``).

The source is a repository with a SQLite catalog (``index.db``); its objects are usually in
its directory. It is read and never written: the migration holds its maintenance ``lock``
and ``writers.lock`` exclusively (no gc, prune, rebuild-index or backup runs meanwhile;
mounts and restores may go on) and opens nothing for writing. DEST becomes a new repository
directory as ``repo init --store ... --catalog ...`` makes one (``store.json``,
``catalog.json``, the lock files), with the same repository id, config and key object (an
encrypted repository keeps its passphrase).

Order (what makes an interruption harmless):

1. checks before anything is written: DEST is new or an empty directory, the catalog URL
   holds no password and its database no catalog, the source is a repository whose
   catalog is SQLite and up to date;
2. DEST prepared as ``repo init`` does it: the bucket probed (put-if-absent, ranged reads,
   Object Lock when asked) and its prefix empty, then the directory with ``store.json`` and
   the lock files, then the catalog's tables in the database, which must hold no catalog;
3. every catalog row, ids kept, in one transaction (catalog.index.tablecopy);
4. every object but ``config`` (packs, manifests, screenshots, ``key``) by the store's own
   writes: packs staged (multipart above the part size), the others put, each with
   ``If-None-Match`` and, with Object Lock, the retain-until date every write gets
   (catalog.s3lock), so every backup is protected as if it had committed at the migration;
5. the bucket listed and compared with the source (every key, every size);
6. ``config`` last: a prefix without it is not a repository yet, as after ``repo init``;
   then the retention book (``locks.json``) saved, so later commits know every lock date.

Interrupted before 6, the source is unchanged and DEST is no repository (opening it says
so); nothing uses its bucket prefix or its database. Run the migration again into a fresh
DEST: a new directory, an empty prefix and an empty database (the objects already copied
may be under Object Lock, so their prefix cannot always be emptied).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vmaccel.catalog.bootcheck import PREFIX as SCREENSHOTS
from vmaccel.catalog.catalogdb import catalog_url, check_url, create_catalog
from vmaccel.catalog.config import OBJECT as CONFIG_OBJECT
from vmaccel.catalog.durable import create_private_file, fsync_dir
from vmaccel.catalog.index import Index
from vmaccel.catalog.index.tablecopy import check_source, copy_catalog
from vmaccel.catalog.key import OBJECT as KEY_OBJECT
from vmaccel.catalog.lock import FileLock
from vmaccel.catalog.manifest import PREFIX as MANIFESTS
from vmaccel.catalog.objectstore import ObjectInfo, ObjectMissing, ObjectStore
from vmaccel.catalog.packstore import PREFIX as PACKS
from vmaccel.catalog.repository import read_config
from vmaccel.catalog.storeconfig import FILE as STORE_FILE
from vmaccel.catalog.storeconfig import StoreSpec, open_store, prepare_store
from vmaccel.vocabulary.errors import DamageError, RepositoryError, RepositoryExists, UsageError
from vmaccel.vocabulary.units import format_bytes, format_duration

logger = logging.getLogger(__name__)

PREFIXES = (PACKS, MANIFESTS, SCREENSHOTS)  # every object but config and key is under one
COPY_THREADS = 4  # objects copied at once (a big pack's parts go in parallel besides)
READ_BYTES = 8 * 1024 * 1024  # bytes read from the source per request

# ``track(label, total bytes)`` -> ``advance(n bytes)``: progress for people (the CLI's bar).
Tracker = Callable[[str, int], Callable[[int], None]]


def _quiet(label: str, total: int) -> Callable[[int], None]:
    return lambda n: None


@dataclass(frozen=True)
class MigrationTarget:
    """Where the repository goes: the new directory ``path``, the S3 ``store`` for its
    objects and the PostgreSQL ``catalog`` URL (no password) for its index."""

    path: Path
    store: StoreSpec
    catalog: str


@dataclass(frozen=True)
class MigrationReport:
    """What was copied: ``objects`` and their ``bytes``, catalog ``rows`` per table (in copy
    order), and the ``seconds`` it took (wall clock)."""

    source: str
    dest: str
    store: str
    catalog: str
    encrypted: bool
    objects: int
    bytes: int
    rows: tuple[tuple[str, int], ...]
    seconds: float

    @property
    def total_rows(self) -> int:
        return sum(n for _, n in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows": dict(self.rows), "total_rows": self.total_rows}

    def summary(self) -> list[str]:
        tables = ", ".join(f"{t} {n}" for t, n in self.rows if n)
        lines = [
            f"migrated {self.source} to {self.dest} in {format_duration(self.seconds)}",
            f"objects: {self.objects} ({format_bytes(self.bytes)}) to {self.store}",
            f"catalog rows: {self.total_rows} to {self.catalog} ({tables or 'none'})",
        ]
        if self.encrypted:
            lines.append("the key moved with the objects: the passphrase is the same")
        lines.append(
            f"the source is unchanged; check the copy with `vmaccel verify --full --repo"
            f" {self.dest}`, then use {self.dest} instead of {self.source}"
        )
        return lines


def migrate(
    source: Path,
    target: MigrationTarget,
    lock_wait: float = 0.0,
    track: Tracker | None = None,
    also_hold: AbstractContextManager[Any] | None = None,
) -> MigrationReport:
    """Copy the repository at ``source`` to ``target`` (see the module docstring for the
    order and what an interruption leaves). ``lock_wait``: seconds to wait for the source's
    locks (:class:`~vmaccel.vocabulary.errors.RepositoryLocked` after that); ``also_hold``:
    one more lock of the source to hold as long as its own (the application's daemon lock),
    taken once ``source`` is known to be a repository, before the others. When this
    returns, DEST is a complete repository, durably."""
    started, since = time.monotonic(), time.time()
    track = track or _quiet
    check_dest(target.path)
    check_url(target.catalog)
    store = open_store(source)
    config = read_config(store, source)
    if catalog_url(source) is not None:
        raise UsageError(f"{source} keeps its catalog in PostgreSQL already: nothing to move")
    with also_hold or nullcontext(), _source_locks(source, lock_wait), contextlib.closing(store):
        objects = source_objects(store)
        dest, rows = _begin_dest(source, target)
        with contextlib.closing(dest):
            total = sum(o.size for o in objects)
            advance = track("objects", total)
            _copy_objects(store, dest, objects[:-1], advance)
            _check_copied(dest, objects[:-1], target)
            _copy_object(store, dest, objects[-1], advance)  # config: now DEST is complete
            dest.protect((o.key for o in objects), since)  # none is short: saves the dates
    fsync_dir(target.path.parent)
    return MigrationReport(
        str(source), str(target.path), target.store.location.describe(), target.catalog,
        config.encrypted, len(objects), total, rows, round(time.monotonic() - started, 3),
    )  # fmt: skip


def check_dest(path: Path) -> None:
    """Refuse (:class:`RepositoryExists`) a DEST that is a repository, not a directory, or a
    directory that is not empty: what ``repo init`` refuses."""
    if (path / STORE_FILE).exists() or (path / CONFIG_OBJECT).exists():
        raise RepositoryExists(f"{path} already holds a vmaccel repository")
    if path.exists() and not path.is_dir():
        raise RepositoryExists(f"{path} exists and is not a directory; choose another path")
    if path.exists() and any(path.iterdir()):
        raise RepositoryExists(f"{path} exists and is not empty; choose a new directory")


def check_catalog(url: str) -> None:
    """Refuse a catalog URL with a password (:class:`UsageError`) or naming a database that
    holds a vmaccel catalog (:class:`RepositoryExists`), before anything is made: the
    database of an interrupted migration is refused here, not after DEST was begun."""
    from vmaccel.catalog.index.postgres import PgIndex

    index = PgIndex(check_url(url), create=True)
    try:
        if index.holds_catalog():
            raise RepositoryExists(
                f"the database {index.path} already holds a vmaccel catalog; use an empty one"
            )
    finally:
        index.close()


@contextlib.contextmanager
def _source_locks(path: Path, wait: float) -> Iterator[None]:
    """The maintenance lock and ``writers.lock``, both exclusive (as rebuild-index takes
    them): no gc, prune, rebuild-index or backup changes the source while it is copied."""
    with (
        FileLock(path / "lock", exclusive=True, wait=wait),
        FileLock(path / "writers.lock", exclusive=True, wait=wait, what="backup writer"),
    ):
        yield


def source_objects(store: ObjectStore) -> list[ObjectInfo]:
    """Every object of a repository, sorted by key, ``config`` last (``key`` when there is
    one): the keys under :data:`PREFIXES` and the two single objects."""
    found = [info for prefix in PREFIXES for info in store.list_prefix(prefix)]
    try:
        found.append(store.stat(KEY_OBJECT))
    except ObjectMissing:
        pass  # an unencrypted repository
    return [*sorted(found, key=lambda i: i.key), store.stat(CONFIG_OBJECT)]


def prepare_dest(target: MigrationTarget) -> ObjectStore:
    """Make DEST as ``repo init --store --catalog`` does (see the module docstring, step 2);
    returns its object store, which holds no object yet."""
    target.path.parent.mkdir(parents=True, exist_ok=True)
    store = prepare_store(target.path, target.store, (PACKS, MANIFESTS))
    for name in ("lock", "writers.lock", "readers.lock"):
        os.close(create_private_file(target.path / name))
    create_catalog(target.path, target.catalog)
    return store


def _begin_dest(
    source: Path, target: MigrationTarget
) -> tuple[ObjectStore, tuple[tuple[str, int], ...]]:
    """Steps 1 (the source's catalog and the database), 2 and 3 of the module docstring:
    DEST's object store (no object in it yet) and the rows copied per table."""
    index = Index(source / "index.db")
    try:
        check_source(index)
        check_catalog(target.catalog)
        dest = prepare_dest(target)
        try:
            return dest, _copy_rows(index, target.catalog)
        except BaseException:
            dest.close()
            raise
    finally:
        index.close()


def _copy_rows(index: Index, url: str) -> tuple[tuple[str, int], ...]:
    from vmaccel.catalog.index.postgres import PgIndex

    dest = PgIndex(url)
    try:
        plan = copy_catalog(index, dest)
    finally:
        dest.close()
    return tuple((t.table, t.rows) for t in plan)


def _copy_objects(
    src: ObjectStore, dest: ObjectStore, objects: list[ObjectInfo], advance: Callable[[int], None]
) -> None:
    """Copy ``objects``, :data:`COPY_THREADS` at once; the first failure stops the rest
    (copies already running finish or fail) and is raised."""
    pool = ThreadPoolExecutor(COPY_THREADS, "vmaccel-migrate")
    try:
        pending = [pool.submit(_copy_object, src, dest, o, advance) for o in objects]
        for done in as_completed(pending):
            done.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _copy_object(
    src: ObjectStore, dest: ObjectStore, info: ObjectInfo, advance: Callable[[int], None]
) -> None:
    """One object, written as the repository writes it: a pack staged (streamed in
    :data:`READ_BYTES` pieces), anything else put whole."""
    if not info.key.startswith(PACKS):
        data = src.get(info.key)
        _check_size(info, len(data))
        dest.put(info.key, data)
        advance(len(data))
        return
    upload = dest.stage(info.key)
    try:
        offset = 0
        while offset < info.size:
            piece = src.get(info.key, offset, min(READ_BYTES, info.size - offset))
            if not piece:
                _check_size(info, offset)
            upload.stream.write(piece)
            offset += len(piece)
            advance(len(piece))
        upload.commit()
    except BaseException:
        upload.abort()
        raise


def _check_size(info: ObjectInfo, size: int) -> None:
    if size != info.size:
        raise DamageError(f"{info.key} has {size} bytes, but {info.size} were listed")


def _check_copied(dest: ObjectStore, objects: list[ObjectInfo], target: MigrationTarget) -> None:
    """Every object of ``objects`` is in ``dest`` with its size (one listing per prefix)."""
    found = {i.key: i.size for prefix in PREFIXES for i in dest.list_prefix(prefix)}
    for single in (o for o in objects if not o.key.startswith(PREFIXES)):
        with contextlib.suppress(ObjectMissing):
            found[single.key] = dest.stat(single.key).size
    wrong = [o.key for o in objects if found.get(o.key) != o.size]
    if wrong:
        raise RepositoryError(
            f"{len(wrong)} object(s) did not arrive whole in {target.store.location.describe()}"
            f" (first: {wrong[0]}); {target.path} is not a repository: migrate again into a"
            " new directory, an empty prefix and an empty database"
        )

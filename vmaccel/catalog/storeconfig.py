"""Which object store a repository keeps its objects in, and opening it.

A repository directory without ``store.json`` keeps its objects itself (the directory store,
catalog.localstore). With one, the objects live in S3 (catalog.s3store) and the directory
keeps only what is local by nature: the index, the lock files, ``locks.json`` (known Object Lock
dates), the read cache (``cache/``) and the staged uploads (``staging/``).

``store.json`` (written once by ``repo init``, mode 0600, holds no secret: credentials come
from the usual AWS variables or profile, see catalog.s3client)::

    {"kind": "s3", "url": "s3://BUCKET/PREFIX", "endpoint": URL, "region": R,
     "lock_mode": "compliance" | "governance" | null, "lock_seconds": N,
     "cache_bytes": N, "part_size": N}
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmaccel.catalog.durable import PRIVATE_DIR, make_private_dir, write_file_durably
from vmaccel.catalog.localstore import LocalObjectStore
from vmaccel.catalog.objectstore import ObjectExists, ObjectStore
from vmaccel.catalog.readcache import ReadCache
from vmaccel.catalog.s3client import PART_SIZE, S3Location, s3_errors
from vmaccel.catalog.s3lock import LockPolicy, RetentionBook
from vmaccel.vocabulary.errors import RepositoryError, RepositoryExists, UsageError

if TYPE_CHECKING:  # the S3 store (and boto3) load only when an S3 repository is opened
    from vmaccel.catalog.s3store import S3ObjectStore

FILE = "store.json"
DEFAULT_CACHE_BYTES = 1024**3
# Pack size of a new S3 repository: as fast as 16 and 128 MiB on SeaweedFS (bench/bench_s3.py),
# a quarter of the objects (and of the lock extensions) of the directory default, four parts.
S3_PACK_SIZE = 64 * 1024 * 1024


@dataclass(frozen=True)
class StoreSpec:
    """An S3 store (see the module docstring); ``lock_seconds`` 0 without Object Lock;
    ``cache_bytes`` bounds the read cache (0: none); sizes in bytes."""

    url: str
    endpoint: str
    region: str = "us-east-1"
    lock_mode: str | None = None
    lock_seconds: int = 0
    cache_bytes: int = DEFAULT_CACHE_BYTES
    part_size: int = PART_SIZE
    kind: str = "s3"

    def __post_init__(self) -> None:
        self.location  # noqa: B018 - validates the URL and endpoint
        self.lock  # noqa: B018 - validates the lock
        if self.part_size < 5 * 1024 * 1024:
            raise UsageError("an S3 part size must be at least 5 MiB")

    @property
    def location(self) -> S3Location:
        return S3Location.parse(self.url, self.endpoint, self.region)

    @property
    def lock(self) -> LockPolicy | None:
        if self.lock_mode is None and not self.lock_seconds:
            return None
        return LockPolicy(self.lock_mode or "", self.lock_seconds)


def load_spec(path: Path) -> StoreSpec | None:
    """The store of the repository directory ``path`` (None: the directory store)."""
    try:
        raw: dict[str, Any] = json.loads((path / FILE).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise RepositoryError(f"{path / FILE} is not valid JSON: {exc}") from exc
    if raw.get("kind") != "s3":
        raise RepositoryError(f"{path / FILE}: unknown store kind {raw.get('kind')!r}")
    try:
        return StoreSpec(**{k: v for k, v in raw.items() if k in StoreSpec.__dataclass_fields__})
    except TypeError as exc:
        raise RepositoryError(f"{path / FILE} is incomplete: {exc}") from exc


def save_spec(path: Path, spec: StoreSpec) -> None:
    """Write ``store.json`` durably (never over an existing one)."""
    write_file_durably(path / FILE, (json.dumps(asdict(spec), indent=2) + "\n").encode())


def s3_store(path: Path, spec: StoreSpec) -> S3ObjectStore:
    """The S3 store ``spec`` names, with its local parts in the directory ``path``."""
    from vmaccel.catalog.s3store import S3ObjectStore

    cache = ReadCache(path / "cache", spec.cache_bytes) if spec.cache_bytes else None
    lock = spec.lock
    book = RetentionBook(path / "locks.json") if lock else None
    return S3ObjectStore(spec.location, path / "staging", lock, book, cache, spec.part_size)


def prepare_store(path: Path, spec: StoreSpec | None, layout: tuple[str, ...]) -> ObjectStore:
    """For ``repo init``: the store of a new repository at ``path`` (an empty or missing
    directory whose parent exists). The directory store makes ``path`` and the directories
    of ``layout``; an S3 store is probed (see :func:`probe`) and must hold no object under
    its prefix before ``path`` and its ``store.json`` are made."""
    if spec is None:
        local = LocalObjectStore(path)
        local.make_layout(layout)
        return local
    from vmaccel.catalog.s3store import S3ObjectStore

    bare = S3ObjectStore(spec.location, path / "staging", spec.lock)
    probe(bare)
    if next(bare.list_prefix(""), None) is not None:
        raise RepositoryExists(
            f"{spec.location.describe()} already holds objects; choose an empty prefix"
        )
    make_private_dir(path)
    path.chmod(PRIVATE_DIR)
    save_spec(path, spec)
    return s3_store(path, spec)


def open_store(path: Path) -> ObjectStore:
    """The object store of the repository directory ``path``."""
    spec = load_spec(path)
    return LocalObjectStore(path) if spec is None else s3_store(path, spec)


def probe(store: S3ObjectStore) -> None:
    """Refuse a bucket that lacks what the repository needs: ``If-None-Match`` honoured
    (put-if-absent), ranged GETs, and with Object Lock asked, versioning and Object Lock
    enabled on the bucket. Writes and removes one small object under ``.probe/``."""
    where, client = store.where, store.client
    if store.lock is not None:
        with s3_errors(where):
            versioning = client.get_bucket_versioning(Bucket=where.bucket).get("Status")
            try:
                conf = client.get_object_lock_configuration(Bucket=where.bucket)
                enabled = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
            except Exception as exc:  # noqa: BLE001 - any refusal means "no Object Lock"
                enabled = f"not available ({exc})"
        if versioning != "Enabled" or enabled != "Enabled":
            raise RepositoryError(
                f"bucket {where.bucket} at {where.endpoint} has no Object Lock (versioning "
                f"{versioning or 'off'}, Object Lock {enabled or 'off'}): create the bucket "
                "with Object Lock enabled, or init without --object-lock"
            )
    key = f".probe/{secrets.token_hex(8)}"
    name = where.prefix + key
    with s3_errors(where, key):
        client.put_object(Bucket=where.bucket, Key=name, Body=b"vmaccel", IfNoneMatch="*")
        try:
            try:
                client.put_object(Bucket=where.bucket, Key=name, Body=b"x", IfNoneMatch="*")
            except Exception as exc:
                if not isinstance(exc, ObjectExists) and "PreconditionFailed" not in str(exc):
                    raise
            else:
                raise RepositoryError(
                    f"{where.endpoint} ignores If-None-Match (it overwrote an object): "
                    "vmaccel needs put-if-absent and refuses this object store"
                )
            got = client.get_object(Bucket=where.bucket, Key=name, Range="bytes=2-4")
            if got["Body"].read() != b"acc":
                raise RepositoryError(f"{where.endpoint} does not serve ranged GETs correctly")
        finally:
            store._erase(name, key)

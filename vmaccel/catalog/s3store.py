"""The object store in an S3 bucket (SeaweedFS, Ceph RGW, AWS S3 and the like).

Key ``a/b`` is the S3 object ``<prefix>a/b`` of the bucket; how each call of the contract
(catalog.objectstore) maps onto S3 is tabled there. Specifics:

* ``put`` and ``Upload.commit`` send ``If-None-Match: *`` (a taken key answers 412,
  :class:`~vmaccel.catalog.objectstore.ObjectExists`); an upload up to ``part_size`` bytes is
  one PUT, a bigger one a multipart upload of ``part_size`` parts sent by ``UPLOAD_THREADS``
  threads while it is being written (catalog.s3upload), completed with ``If-None-Match: *``
  (aborted on any failure). Uploads are staged in local files under ``staging``;
  multipart uploads a killed writer left in the bucket are
  listed by ``staged`` too, named ``<last key component>~<upload id>``.
* Ranged reads of packs go through the bounded local :class:`~vmaccel.catalog.readcache.
  ReadCache` when one is given; other objects are read directly.
* ``stat`` and ``list_prefix`` give ``mtime`` in whole seconds (HEAD has no finer one).
* Keys whose first component starts with ``.`` are the store's own (``.pending/``,
  ``.probe/``): never repository objects (check_key refuses such keys), never listed.
* Object Lock (``lock``): every object is written with ``lock.until(now)`` as its
  retain-until date; :meth:`S3ObjectStore.protect` extends locks (catalog.s3lock has the
  rule). In a versioned bucket ``delete`` removes every version of the key; a version still
  locked makes it a *deferred delete*: the object ``.pending/<key>`` records it (JSON
  ``{"until": UNIX seconds}``), the key is hidden from this store's reads and listings at
  once (and from every store opened later), and :meth:`S3ObjectStore.expire_deletes`
  deletes it once the lock has run out.

Thread safety: every call may come from any thread (boto3 clients are thread safe).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from vmaccel.catalog.durable import make_private_dir
from vmaccel.catalog.objectstore import (
    ObjectInfo,
    ObjectMissing,
    StagedUpload,
    check_key,
)
from vmaccel.catalog.readcache import ReadCache
from vmaccel.catalog.s3client import (
    PART_SIZE,
    S3Location,
    error_code,
    make_client,
    s3_errors,
)
from vmaccel.catalog.s3lock import LockPolicy, RetentionBook
from vmaccel.catalog.s3upload import S3Upload
from vmaccel.vocabulary.errors import RepositoryError

logger = logging.getLogger(__name__)

UPLOAD_THREADS = 4
PENDING = ".pending/"


def _when(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class S3ObjectStore:
    """Objects in ``where`` (see the module docstring); uploads staged under ``staging``."""

    def __init__(
        self,
        where: S3Location,
        staging: Path,
        lock: LockPolicy | None = None,
        book: RetentionBook | None = None,
        cache: ReadCache | None = None,
        part_size: int = PART_SIZE,
        client: Any = None,
    ) -> None:
        self.where, self.staging, self.lock, self.cache = where, staging, lock, cache
        self.book, self.part_size = book, part_size
        self.client = client if client is not None else make_client(where)
        self._hidden: set[str] | None = None  # keys of deferred deletes
        self._versioned: bool | None = None
        self._guard = threading.Lock()

    @property
    def lock_seconds(self) -> int:
        return self.lock.seconds if self.lock else 0

    def object_name(self, key: str) -> str:
        """The S3 key of object ``key``."""
        return self.where.prefix + key

    _k = object_name

    def lock_args(self) -> tuple[dict[str, Any], float]:
        """The Object Lock arguments of a write now, and its retain-until date (0: none)."""
        if self.lock is None:
            return {}, 0.0
        until = self.lock.until(time.time())
        args = {  # AWS S3 wants a checksum on every write that sets a retention
            "ObjectLockMode": self.lock.s3_mode,
            "ObjectLockRetainUntilDate": _when(until),
            "ChecksumAlgorithm": "CRC32",
        }
        return args, until

    def written(self, key: str, until: float) -> None:
        """Record the lock date of an object just written (for :meth:`protect`)."""
        if self.book is not None and until:
            self.book.record(key, until)

    # -- writing --------------------------------------------------------------------------

    def put(self, key: str, data: bytes, *, replace: bool = False) -> None:
        check_key(key)
        args, until = self.lock_args()
        if not replace:
            args["IfNoneMatch"] = "*"
        with s3_errors(self.where, key):
            self.client.put_object(Bucket=self.where.bucket, Key=self._k(key), Body=data, **args)
        self.written(key, until)

    def stage(self, key: str) -> S3Upload:
        check_key(key)
        make_private_dir(self.staging)
        return S3Upload(self, key, self.staging / key.rpartition("/")[2], UPLOAD_THREADS)

    def delete(self, key: str) -> bool:
        check_key(key)
        if key in self._hidden_keys():
            return False  # deferred already
        locked = self._erase(self._k(key), key)
        if locked:
            self._defer(key, locked)
        return not locked

    def _erase(self, name: str, key: str) -> float:
        """Delete every version of S3 object ``name``; returns 0, or the latest retain-until
        date (UNIX seconds) of the versions a lock kept."""
        with s3_errors(self.where, key):
            if not self.versioned():
                self.client.delete_object(Bucket=self.where.bucket, Key=name)
                return 0.0
            kept = 0.0
            for version in self._versions(name):
                try:
                    self.client.delete_object(Bucket=self.where.bucket, Key=name,
                                              VersionId=version)  # fmt: skip
                except ClientError as exc:
                    until = self._locked_until(name, version) if error_code(exc) in (
                        "AccessDenied", "403") else 0.0  # fmt: skip
                    if not until:
                        raise
                    kept = max(kept, until)
            return kept

    def _versions(self, name: str) -> list[str]:
        pages = self.client.get_paginator("list_object_versions").paginate(
            Bucket=self.where.bucket, Prefix=name
        )
        out = []
        for page in pages:
            for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                if v["Key"] == name:
                    out.append(str(v["VersionId"]))
        return out

    def _locked_until(self, name: str, version: str) -> float:
        """The retain-until date of a version, when it is still in the future (else 0)."""
        head = self.client.head_object(Bucket=self.where.bucket, Key=name, VersionId=version)
        until = head.get("ObjectLockRetainUntilDate")
        return until.timestamp() if until and until.timestamp() > time.time() else 0.0

    def _defer(self, key: str, until: float) -> None:
        body = json.dumps({"until": until}).encode()
        with s3_errors(self.where, key):
            self.client.put_object(Bucket=self.where.bucket, Key=self._k(PENDING + key), Body=body)
        self._hidden_keys().add(key)
        logger.info("%s is locked until %s: its delete is recorded", key, _when(until))

    def versioned(self) -> bool:
        """Whether the bucket keeps versions (Object Lock implies it)."""
        if self._versioned is None:
            with s3_errors(self.where):
                got = self.client.get_bucket_versioning(Bucket=self.where.bucket)
            self._versioned = got.get("Status") in ("Enabled", "Suspended")
        return self._versioned

    def staged(self) -> list[StagedUpload]:
        out = []
        try:
            entries = list(os.scandir(self.staging))
        except FileNotFoundError:
            entries = []
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            out.append(StagedUpload(e.name, st.st_size, st.st_mtime))
        for key, upload, started in self._uploads():
            name = f"{key.rpartition('/')[2]}~{upload}"
            if "/" not in upload:
                out.append(StagedUpload(name, 0, started))
        return sorted(out, key=lambda s: s.name)

    def _uploads(self) -> Iterator[tuple[str, str, float]]:
        with s3_errors(self.where):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.where.bucket, Prefix=self.where.prefix
            )
            for page in pages:
                for u in page.get("Uploads", []):
                    key = u["Key"][len(self.where.prefix) :]
                    yield key, u["UploadId"], u["Initiated"].timestamp()

    def discard_staged(self, name: str) -> None:
        if "/" in check_key(name):
            raise ValueError(f"invalid staged upload name {name!r}")
        base, sep, upload = name.partition("~")
        if not sep:
            (self.staging / name).unlink(missing_ok=True)
            return
        for key, found, _ in self._uploads():
            if found == upload and key.rpartition("/")[2] == base:
                with s3_errors(self.where, key):
                    try:
                        self.client.abort_multipart_upload(
                            Bucket=self.where.bucket, Key=self._k(key), UploadId=upload
                        )
                    except ClientError as exc:
                        if error_code(exc) != "NoSuchUpload":
                            raise

    # -- reading --------------------------------------------------------------------------

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        check_key(key)
        if key in self._hidden_keys():
            raise self._missing(key)
        if length is not None and length <= 0:
            self.stat(key)
            return b""
        if self.cache is not None and length is not None and key.startswith("packs/"):
            return self.cache.read(key, offset, length, lambda o, n: self._fetch(key, o, n))
        return self._fetch(key, offset, length)

    def _fetch(self, key: str, offset: int, length: int | None) -> bytes:
        args: dict[str, Any] = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            args["Range"] = f"bytes={offset}-{end}"
        with s3_errors(self.where, key):
            try:
                got = self.client.get_object(Bucket=self.where.bucket, Key=self._k(key), **args)
            except ClientError as exc:
                if error_code(exc) == "InvalidRange":  # the object exists and ends before
                    return b""
                raise
            data: bytes = got["Body"].read()
        return data

    def prefetch(self, key: str, offset: int, length: int) -> None:
        """Packs only, through the read cache (its read-ahead threads fetch the segments);
        without a cache there is nowhere to keep what would be fetched, so nothing."""
        if self.cache is not None and key.startswith("packs/") and length > 0:
            self.cache.prefetch(key, offset, length, lambda o, n: self._fetch(key, o, n))

    def stat(self, key: str) -> ObjectInfo:
        check_key(key)
        if key in self._hidden_keys():
            raise self._missing(key)
        with s3_errors(self.where, key):
            head = self.client.head_object(Bucket=self.where.bucket, Key=self._k(key))
        return ObjectInfo(key, int(head["ContentLength"]), _seconds(head["LastModified"]))

    def list_prefix(self, prefix: str) -> Iterator[ObjectInfo]:
        hidden = self._hidden_keys()
        found = []
        for name, size, mtime in self._list(self.where.prefix + prefix):
            key = name[len(self.where.prefix) :]
            if key.startswith(".") or key in hidden or "/." in key:
                continue
            found.append(ObjectInfo(key, size, mtime))
        return iter(sorted(found, key=lambda i: i.key))

    def _list(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        with s3_errors(self.where):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.where.bucket, Prefix=prefix
            )
            for page in pages:
                for o in page.get("Contents", []):
                    yield str(o["Key"]), int(o["Size"]), _seconds(o["LastModified"])

    def _hidden_keys(self) -> set[str]:
        with self._guard:
            if self._hidden is None:
                start = len(self.where.prefix + PENDING)
                self._hidden = {n[start:] for n, _, _ in self._list(self._k(PENDING))}
            return self._hidden

    def _missing(self, key: str) -> ObjectMissing:
        return ObjectMissing(f"{key} is missing from {self.where.url}")

    def close(self) -> None:
        """Nothing to release: the connection pool is reused (the store stays usable)."""

    # -- Object Lock ----------------------------------------------------------------------

    def protect(self, keys: Iterable[str], since: float) -> int:
        if self.lock is None:
            return 0
        need, target = since + self.lock.seconds, self.lock.until(max(since, time.time()))
        book = self.book
        short = book.short_of(keys, need) if book else list(dict.fromkeys(keys))
        try:
            with ThreadPoolExecutor(8, "vmaccel-s3-lock") as pool:
                return sum(pool.map(lambda k: self._extend(k, need, target), short))
        finally:
            if book is not None:
                book.save()

    def _extend(self, key: str, need: float, target: float) -> int:
        """Lock ``key`` until ``target``; 1 when extended, 0 when it was locked long enough
        already. Raises a :class:`RepositoryError` when its lock cannot reach ``need``."""
        mode = self.lock.s3_mode if self.lock else ""
        retention = {"Mode": mode, "RetainUntilDate": _when(target)}
        name = self._k(key)
        with s3_errors(self.where, key):
            try:
                self.client.put_object_retention(Bucket=self.where.bucket, Key=name,
                                                 Retention=retention)  # fmt: skip
                until, extended = target, 1
            except ClientError as exc:
                if error_code(exc) in ("NoSuchKey", "404"):
                    logger.warning("cannot lock %s: it is missing (run `vmaccel verify`)", key)
                    return 0
                if error_code(exc) not in ("AccessDenied", "403"):
                    raise
                head = self.client.head_object(Bucket=self.where.bucket, Key=name)
                found = head.get("ObjectLockRetainUntilDate")
                until, extended = (found.timestamp() if found else 0.0), 0
                if until < need:
                    raise RepositoryError(
                        f"cannot extend the Object Lock of {key} to {_when(need)}: "
                        f"{exc.response.get('Error', {}).get('Message', exc)}"
                    ) from None
        self.written(key, until)
        return extended

    def expire_deletes(self) -> tuple[int, int]:
        done = waiting = 0
        start = len(self.where.prefix + PENDING)
        for name, _, _ in list(self._list(self._k(PENDING))):
            key = name[start:]
            with s3_errors(self.where, key):
                doc = json.loads(self.client.get_object(Bucket=self.where.bucket,
                                                        Key=name)["Body"].read())  # fmt: skip
            if float(doc.get("until", 0)) > time.time() or self._erase(self._k(key), key):
                waiting += 1
                continue
            self._erase(name, PENDING + key)
            if self.book is not None:
                self.book.forget(key)
            self._hidden_keys().discard(key)
            done += 1
        if done and self.book is not None:
            self.book.save()
        return done, waiting


def _seconds(when: datetime) -> float:
    """Whole UNIX seconds: listings carry milliseconds, HEAD only seconds."""
    return float(int(when.timestamp()))

"""What the S3 store promises beyond the object-store contract, on a real server (SeaweedFS):
multipart uploads, leftovers of killed writers, the read cache, the capability probe, and
Object Lock (locked objects resist the repository's own credentials; deletes are deferred
until the lock expires)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.catalog.s3server import SeaweedServer
from vmaccel.catalog.objectstore import ObjectExists, ObjectMissing
from vmaccel.catalog.readcache import ReadCache
from vmaccel.catalog.s3client import S3Location
from vmaccel.catalog.s3lock import LockPolicy, RetentionBook
from vmaccel.catalog.s3store import PENDING, S3ObjectStore
from vmaccel.catalog.storeconfig import probe
from vmaccel.vocabulary.errors import RepositoryError

MIB = 1024 * 1024


def _store(
    server: SeaweedServer, tmp_path: Path, lock: LockPolicy | None = None, **kw: object
) -> S3ObjectStore:
    where = S3Location(server.bucket(lock=lock is not None), "r/", server.endpoint)
    book = RetentionBook(tmp_path / "locks.json") if lock else None
    return S3ObjectStore(where, tmp_path / "staging", lock, book, **kw)  # type: ignore[arg-type]


def _in(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def _code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


@pytest.mark.parametrize("lock", [None, LockPolicy("governance", 60)], ids=["plain", "locked"])
def test_a_large_upload_is_multipart_and_put_if_absent(
    s3: SeaweedServer, tmp_path: Path, lock: LockPolicy | None
) -> None:
    store = _store(s3, tmp_path, lock, part_size=5 * MIB)
    data = bytes(range(251)) * (11 * MIB // 251)  # three parts, none aligned to 251
    upload = store.stage("packs/ab/ab01")
    for off in range(0, len(data), MIB):
        upload.stream.write(data[off : off + MIB])
        if off == 6 * MIB:  # parts go up while the pack is written, invisible until commit
            assert [s.name.partition("~")[0] for s in store.staged()] == ["ab01", "ab01"]
            with pytest.raises(ObjectMissing):
                store.stat("packs/ab/ab01")
    upload.commit()
    assert store.stat("packs/ab/ab01").size == len(data)
    assert store.get("packs/ab/ab01", 5 * MIB - 7, 20) == data[5 * MIB - 7 : 5 * MIB + 13]
    again = store.stage("packs/ab/ab01")
    again.stream.write(data)
    with pytest.raises(ObjectExists):
        again.commit()  # the multipart upload is completed with If-None-Match, then aborted
    again.abort()
    assert store.staged() == []
    assert store.get("packs/ab/ab01") == data


def test_a_killed_writers_multipart_upload_is_staged_garbage(
    s3: SeaweedServer, tmp_path: Path
) -> None:
    store = _store(s3, tmp_path)
    name = store.where.prefix + "packs/cd/cd01"
    upload = s3.client().create_multipart_upload(Bucket=store.where.bucket, Key=name)
    (left,) = store.staged()
    assert left.name == f"cd01~{upload['UploadId']}"
    store.discard_staged(left.name)
    store.discard_staged(left.name)  # gone already: no error
    assert store.staged() == []


def test_the_read_cache_is_bounded_and_least_recently_used(tmp_path: Path) -> None:
    data = bytes(range(256)) * 64  # 16 KiB: four 4 KiB segments
    fetched: list[tuple[int, int]] = []

    def fetch(offset: int, length: int) -> bytes:
        fetched.append((offset, length))
        return data[offset : offset + length]

    cache = ReadCache(tmp_path / "cache", max_bytes=2 * 4096, segment=4096)
    assert cache.read("packs/p", 4000, 200, fetch) == data[4000:4200]  # two segments, one GET
    assert fetched == [(0, 8192)]
    assert cache.read("packs/p", 100, 50, fetch) == data[100:150]  # a hit
    assert fetched == [(0, 8192)]
    assert cache.read("packs/p", 9000, 7384, fetch) == data[9000:]  # the end: shorter
    assert cache.size <= 2 * 4096
    assert cache.read("packs/p", 0, 10, fetch) == data[:10]  # evicted: fetched again
    assert fetched[-1] == (0, 4096)
    reopened = ReadCache(tmp_path / "cache", max_bytes=4096, segment=4096)  # shrinks on open
    assert reopened.size <= 4096


def test_the_probe_refuses_a_bucket_without_object_lock(s3: SeaweedServer, tmp_path: Path) -> None:
    plain = S3Location(s3.bucket(lock=False), "", s3.endpoint)
    store = S3ObjectStore(plain, tmp_path, LockPolicy("compliance", 60))
    with pytest.raises(RepositoryError, match="has no Object Lock"):
        probe(store)
    probe(S3ObjectStore(plain, tmp_path))  # without a lock the same bucket will do
    assert list(S3ObjectStore(plain, tmp_path).list_prefix("")) == []  # the probe cleaned up


def test_a_locked_pack_resists_the_repositorys_own_credentials(
    s3: SeaweedServer, tmp_path: Path
) -> None:
    store = _store(s3, tmp_path, LockPolicy("compliance", 3600))
    upload = store.stage("packs/ab/ab01")
    upload.stream.write(b"restore point")
    upload.commit()
    client, bucket, name = s3.client(), store.where.bucket, store.where.prefix + "packs/ab/ab01"
    head = client.head_object(Bucket=bucket, Key=name)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"].timestamp() >= time.time() + 3600 - 5
    version = head["VersionId"]
    with pytest.raises(ClientError) as denied:
        client.delete_object(Bucket=bucket, Key=name, VersionId=version)
    assert _code(denied) == "AccessDenied"
    with pytest.raises(ClientError) as taken:
        client.put_object(Bucket=bucket, Key=name, Body=b"ransom", IfNoneMatch="*")
    assert _code(taken) == "PreconditionFailed"
    with pytest.raises(ClientError) as shorten:
        client.put_object_retention(
            Bucket=bucket, Key=name, VersionId=version,
            Retention={"Mode": "COMPLIANCE", "RetainUntilDate": _in(60)},  # earlier
        )  # fmt: skip
    assert _code(shorten) == "AccessDenied"
    client.delete_object(Bucket=bucket, Key=name)  # a delete marker hides, never destroys
    got = client.get_object(Bucket=bucket, Key=name, VersionId=version)
    assert got["Body"].read() == b"restore point"
    store.delete("packs/ab/ab01")  # the store itself: a deferred delete, no error
    assert client.get_object(Bucket=bucket, Key=name, VersionId=version)["Body"].read()


def test_a_locked_delete_is_deferred_then_done_after_expiry(
    s3: SeaweedServer, tmp_path: Path
) -> None:
    lock = LockPolicy("governance", 2)  # slack 0: locked until written + 2 s
    store = _store(s3, tmp_path, lock)
    store.put("backups/u1", b"manifest")
    store.put("backups/u2", b"kept")
    store.delete("backups/u1")
    with pytest.raises(ObjectMissing):
        store.get("backups/u1")
    assert [i.key for i in store.list_prefix("")] == ["backups/u2"]
    again = S3ObjectStore(store.where, tmp_path / "staging", lock)  # e.g. rebuild-index
    assert [i.key for i in again.list_prefix("backups/")] == ["backups/u2"]
    assert again.expire_deletes() == (0, 1)
    time.sleep(2.5)
    assert again.expire_deletes() == (1, 0)
    client, bucket = s3.client(), store.where.bucket
    versions = client.list_object_versions(Bucket=bucket, Prefix=store.where.prefix)
    left = {v["Key"] for v in versions.get("Versions", []) + versions.get("DeleteMarkers", [])}
    assert left == {store.where.prefix + "backups/u2"}  # no version, no tombstone
    assert not any(k.startswith(store.where.prefix + PENDING) for k in left)


def test_protect_extends_only_locks_that_are_too_short(s3: SeaweedServer, tmp_path: Path) -> None:
    store = _store(s3, tmp_path, LockPolicy("compliance", 40))  # slack 10 s
    store.put("config", b"{}")
    name = store.where.prefix + "config"
    assert store.protect(["config"], time.time()) == 0  # written with enough already
    later = time.time() + 100
    assert store.protect(["config"], later) == 1
    head = s3.client().head_object(Bucket=store.where.bucket, Key=name)
    assert head["ObjectLockRetainUntilDate"].timestamp() >= later + 40
    assert store.protect(["config", "config"], later) == 0  # the book knows it
    assert store.protect(["packs/no/such"], later) == 0  # missing: warned, not fatal

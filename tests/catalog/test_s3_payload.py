"""What an S3 write costs the client, on a real server (SeaweedFS): bodies are sent with
``UNSIGNED-PAYLOAD`` (no SHA-256 pass over every pack for the signature, even over http) and
without a CRC the server does not ask for, unless Object Lock requires one; the server
accepts them and the bytes read back intact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.catalog.s3server import SeaweedServer
from vmaccel.catalog.s3client import S3Location
from vmaccel.catalog.s3lock import LockPolicy, RetentionBook
from vmaccel.catalog.s3store import S3ObjectStore

MIB = 1024 * 1024


def _watched(
    server: SeaweedServer, tmp_path: Path, lock: LockPolicy | None
) -> tuple[S3ObjectStore, list[dict[str, str]]]:
    """A store of a new bucket, and the headers of every request it sends with a body."""
    where = S3Location(server.bucket(lock=lock is not None), "r/", server.endpoint)
    book = RetentionBook(tmp_path / "locks.json") if lock else None
    store = S3ObjectStore(where, tmp_path / "staging", lock, book, part_size=5 * MIB)
    sent: list[dict[str, str]] = []

    def record(request: Any, **_: Any) -> None:
        if request.method in ("PUT", "POST") and request.body:
            sent.append({k.lower(): _text(v) for k, v in request.headers.items()})

    store.client.meta.events.register("before-send.s3", record)
    return store, sent


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


@pytest.mark.parametrize("lock", [None, LockPolicy("governance", 60)], ids=["plain", "locked"])
def test_writes_send_unsigned_payloads_and_no_unasked_checksum(
    s3: SeaweedServer, tmp_path: Path, lock: LockPolicy | None
) -> None:
    store, sent = _watched(s3, tmp_path, lock)
    small, large = b"config" * 100, bytes(range(251)) * (11 * MIB // 251)  # 1 PUT; 3 parts
    store.put("config", small)
    upload = store.stage("packs/ab/ab01")
    for off in range(0, len(large), MIB):
        upload.stream.write(large[off : off + MIB])
    upload.commit()
    assert store.get("config") == small
    assert store.get("packs/ab/ab01") == large
    bodies = [h for h in sent if h.get("content-length", "0") not in ("0", "")]
    assert len(bodies) >= 4  # the PUT and three parts (the completion carries XML)
    assert {h["x-amz-content-sha256"] for h in bodies} == {"UNSIGNED-PAYLOAD"}
    crc = [h for h in bodies if "x-amz-checksum-crc32" in h]
    if lock is None:
        assert crc == []  # nobody asked for one: no CRC pass over the pack either
    else:  # Object Lock writes carry a checksum (AWS requires one with a retention date)
        assert len(crc) >= 4

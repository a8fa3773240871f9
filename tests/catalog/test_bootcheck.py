"""The boot-test record in a backup's meta (typed, parsed tolerantly) and the screenshot object
(encrypted like a manifest, verified on read, replaced by the next test, deleted by prune)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vmaccel.catalog.bootcheck import (
    BootCheck,
    delete_screenshot,
    get_screenshot,
    put_screenshot,
    screenshot_key,
)
from vmaccel.catalog.codec import ChunkCodec
from vmaccel.catalog.index import BackupMeta
from vmaccel.catalog.key import MasterKey
from vmaccel.catalog.localstore import LocalObjectStore
from vmaccel.catalog.objectstore import ObjectMissing
from vmaccel.vocabulary.errors import DamageError

FAILED: dict[str, Any] = {
    "passed": False,
    "reason": "no bootable disk",
    "detail": "Boot failed: not a bootable disk; No bootable device.",
    "seconds": 3,
    "time": "2026-12-04T08:00:00+00:00",
    "expect": "login:",
    "firmware": "bios",
    "accel": "tcg",
    "screenshot": "screenshots/u1",
    "screenshot_format": "png",
}


def test_the_record_round_trips_through_the_backup_meta() -> None:
    meta = BackupMeta.from_json({"kind": "standalone", "boot": FAILED})
    assert meta.boot == BootCheck(**{**FAILED, "seconds": 3.0})
    assert meta.extra == {}
    assert meta.to_json() == {"kind": "standalone", "boot": {**FAILED, "seconds": 3.0}}


@pytest.mark.parametrize(
    "broken",
    [
        {**FAILED, "passed": "no"},
        {**FAILED, "seconds": True},
        {**FAILED, "reason": 7},
        {k: v for k, v in FAILED.items() if k != "accel"},
        {**FAILED, "newer_key": 1},
        "passed",
    ],
)
def test_a_record_this_version_cannot_read_whole_is_kept_verbatim(broken: Any) -> None:
    meta = BackupMeta.from_json({"boot": broken})
    assert meta.boot is None
    assert meta.to_json() == {"boot": broken}


@pytest.mark.parametrize("encrypted", [False, True])
def test_screenshots_are_stored_verified_replaced_and_deleted(
    tmp_path: Path, encrypted: bool
) -> None:
    store = LocalObjectStore(tmp_path)
    codec = ChunkCodec(3, MasterKey.generate() if encrypted else None)
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    key = put_screenshot(store, codec, "u1", png)
    assert key == screenshot_key("u1") == "screenshots/u1"
    assert get_screenshot(store, codec, key) == png
    raw = (tmp_path / "screenshots" / "u1").read_bytes()
    assert (png[:8] in raw) is not encrypted
    put_screenshot(store, codec, "u1", b"P6\n1 1\n255\n\x00\x00\x00")  # the next test's
    assert get_screenshot(store, codec, key) == b"P6\n1 1\n255\n\x00\x00\x00"
    data = bytearray((tmp_path / "screenshots" / "u1").read_bytes())
    data[-1] ^= 1
    (tmp_path / "screenshots" / "u1").write_bytes(bytes(data))
    with pytest.raises(DamageError, match="screenshot screenshots/u1 is damaged"):
        get_screenshot(store, codec, key)
    delete_screenshot(store, "u1")
    delete_screenshot(store, "u1")  # idempotent
    with pytest.raises(ObjectMissing):
        get_screenshot(store, codec, key)

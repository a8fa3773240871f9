"""Boot-tested restore points: the record of a backup's last boot test and its screenshot.

The record (:class:`BootCheck`) is the ``boot`` field of the backup's
:class:`~vmaccel.catalog.index.meta.BackupMeta`; each ``verify --boot`` replaces it. The
screenshot is an object of its own, ``screenshots/<backup uuid>``, encoded like a manifest
(compressed, encrypted in ``repokey`` repositories, its content id verified on read) behind
the header::

    magic "VMASHOT\\x01" | flags u8 | raw_len u32 | content id 32 B | payload

It is replaced by the next boot test of the same backup (atomically: the old or the new one)
and deleted with the backup (prune), before the backup's rows go.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from vmaccel.catalog.codec import ChunkCodec
from vmaccel.catalog.objectstore import ObjectStore
from vmaccel.vocabulary.errors import ChunkCorrupt, DamageError

PREFIX = "screenshots/"
MAGIC = b"VMASHOT\x01"
_HEAD = struct.Struct("<8sBI32s")
REASONS = ("no bootable disk", "kernel panic", "guest stopped", "timeout")


@dataclass(frozen=True)
class BootCheck:
    """The last boot test of a backup. ``passed`` when the marker (``expect``, a regular
    expression) appeared on the serial console; otherwise ``reason`` is one of
    :data:`REASONS` and ``detail`` the text that showed it. ``seconds``: from the emulator's
    start to the marker (or to the failure). ``time``: when the test ran (UTC, ISO 8601).
    ``firmware`` (``bios``/``efi``) and ``accel`` (``kvm``/``tcg``) are what ran.
    ``screenshot`` is the object key of the screen at the end, in ``screenshot_format``
    (``png``/``ppm``), None when none was taken."""

    passed: bool
    reason: str | None
    detail: str | None
    seconds: float
    time: str
    expect: str
    firmware: str
    accel: str
    screenshot: str | None
    screenshot_format: str | None

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, raw: Any) -> BootCheck:
        """Raises TypeError when ``raw`` is not a record this version reads whole (then
        :class:`~vmaccel.catalog.index.meta.BackupMeta` keeps it verbatim)."""
        if not isinstance(raw, Mapping) or set(raw) != _KEYS:
            raise TypeError(raw)
        if not isinstance(raw["passed"], bool) or isinstance(raw["seconds"], bool):
            raise TypeError(raw)
        if not isinstance(raw["seconds"], int | float):
            raise TypeError(raw)
        for key in ("time", "expect", "firmware", "accel"):
            if not isinstance(raw[key], str):
                raise TypeError(raw)
        for key in ("reason", "detail", "screenshot", "screenshot_format"):
            if raw[key] is not None and not isinstance(raw[key], str):
                raise TypeError(raw)
        return cls(**{k: raw[k] for k in _KEYS} | {"seconds": float(raw["seconds"])})


_KEYS = frozenset(f.name for f in fields(BootCheck))


def screenshot_key(backup_uuid: str) -> str:
    return PREFIX + backup_uuid


def put_screenshot(store: ObjectStore, codec: ChunkCodec, backup_uuid: str, image: bytes) -> str:
    """Store ``image`` as the screenshot of backup ``backup_uuid`` (replacing an older one),
    durably when this returns; returns its object key."""
    enc = codec.encode(image)
    key = screenshot_key(backup_uuid)
    store.put(key, _HEAD.pack(MAGIC, enc.flags, enc.raw_len, enc.id) + enc.payload, replace=True)
    return key


def get_screenshot(store: ObjectStore, codec: ChunkCodec, key: str) -> bytes:
    """The screenshot stored under ``key``; :class:`DamageError` when it is missing
    (:class:`~vmaccel.catalog.objectstore.ObjectMissing`) or unreadable."""
    data = store.get(key)
    if len(data) < _HEAD.size or data[:8] != MAGIC:
        raise DamageError(f"screenshot {key} has no valid header")
    _, flags, raw_len, cid = _HEAD.unpack_from(data)
    try:
        return codec.decode(cid, flags, raw_len, data[_HEAD.size :])
    except ChunkCorrupt as exc:
        raise DamageError(f"screenshot {key} is damaged: {exc}") from exc


def delete_screenshot(store: ObjectStore, backup_uuid: str) -> None:
    """Delete the screenshot of backup ``backup_uuid`` (durably; no error when there is none)."""
    store.delete(screenshot_key(backup_uuid))

"""Backup manifests: the objects ``backups/<uuid>``, one small one per complete backup.

A manifest holds what the index knows of a backup and its images (VM, times, metadata, each
image's size, block size and map root), so that ``rebuild-index`` can restore every backup
from the packs and manifests alone. It is encoded with the chunk codec (compressed, and
encrypted in ``repokey`` repositories) behind a small header::

    magic "VMAMAN\\x01\\x00" | flags u8 | raw_len u32 | content id 32 B | payload

A manifest is written (durably) inside the backup's completing transaction, just before its
commit (so every complete backup has one), and deleted *before* prune removes the backup's
rows, so a manifest never resurrects a pruned backup. Manifests are never overwritten, except
by rebuild-index renumbering a backup (``replace=True``: atomic, the old or the new document).
"""

from __future__ import annotations

import json
import struct
from typing import Any

from vmaccel.catalog.codec import ChunkCodec
from vmaccel.catalog.index import BackupRow, ImageRow
from vmaccel.catalog.objectstore import ObjectStore
from vmaccel.vocabulary.errors import ChunkCorrupt, DamageError

PREFIX = "backups/"
MAGIC = b"VMAMAN\x01\x00"
_HEAD = struct.Struct("<8sBI32s")


def encode_manifest(codec: ChunkCodec, backup: BackupRow, images: list[ImageRow]) -> bytes:
    doc = {
        "backup": backup.to_json(),
        "images": [i.to_json() for i in images],
    }
    enc = codec.encode(json.dumps(doc, sort_keys=True).encode())
    return _HEAD.pack(MAGIC, enc.flags, enc.raw_len, enc.id) + enc.payload


def decode_manifest(codec: ChunkCodec, data: bytes, name: str) -> dict[str, Any]:
    """Return the manifest document; raises :class:`DamageError` when it is unreadable."""
    if len(data) < _HEAD.size:
        raise DamageError(f"manifest {name} is truncated")
    magic, flags, raw_len, cid = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise DamageError(f"manifest {name} has no valid header")
    try:
        doc: dict[str, Any] = json.loads(codec.decode(cid, flags, raw_len, data[_HEAD.size :]))
    except (ChunkCorrupt, ValueError) as exc:
        raise DamageError(f"manifest {name} is damaged: {exc}") from exc
    return doc


def write_manifest(
    store: ObjectStore,
    codec: ChunkCodec,
    backup: BackupRow,
    images: list[ImageRow],
    replace: bool = False,
) -> None:
    """Store the manifest of ``backup``, durably when this returns. Without ``replace`` an
    existing manifest raises :class:`~vmaccel.catalog.objectstore.ObjectExists`."""
    data = encode_manifest(codec, backup, images)
    store.put(PREFIX + backup.uuid, data, replace=replace)


def read_manifest(store: ObjectStore, codec: ChunkCodec, uuid: str) -> dict[str, Any]:
    """The manifest document of backup ``uuid``; a :class:`DamageError` when it is missing
    (:class:`~vmaccel.catalog.objectstore.ObjectMissing`) or unreadable."""
    return decode_manifest(codec, store.get(PREFIX + uuid), uuid)


def delete_manifest(store: ObjectStore, uuid: str) -> None:
    """Delete the manifest of backup ``uuid`` (durably; no error when it is gone)."""
    store.delete(PREFIX + uuid)


def manifest_names(store: ObjectStore) -> list[str]:
    """The uuids of every stored manifest, sorted."""
    names = (i.key[len(PREFIX) :] for i in store.list_prefix(PREFIX))
    return [n for n in names if "/" not in n]

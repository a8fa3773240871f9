"""Backup manifests: ``<repo>/backups/<uuid>``, one small file per complete backup.

A manifest holds what the index knows of a backup and its images (VM, times, metadata, each
image's size, block size and map root), so that ``rebuild-index`` can restore every backup
from the packs and manifests alone. It is encoded with the chunk codec (compressed, and
encrypted in ``repokey`` repositories) behind a small header::

    magic "VMAMAN\\x01\\x00" | flags u8 | raw_len u32 | content id 32 B | payload

A manifest is written (durably) inside the backup's completing transaction, just before its
commit (so every complete backup has one), and deleted *before* prune removes the backup's
rows, so a manifest never resurrects a pruned backup.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vmaccel.catalog.codec import ChunkCodec
from vmaccel.catalog.durable import fsync_dir, make_private_dir, write_file_durably
from vmaccel.catalog.index import BackupRow, ImageRow
from vmaccel.vocabulary.errors import ChunkCorrupt, DamageError

MAGIC = b"VMAMAN\x01\x00"
_HEAD = struct.Struct("<8sBI32s")


def encode_manifest(codec: ChunkCodec, backup: BackupRow, images: list[ImageRow]) -> bytes:
    doc = {
        "backup": asdict(backup),
        "images": [{**asdict(i), "root": i.root.hex() if i.root else None} for i in images],
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
    directory: Path, codec: ChunkCodec, backup: BackupRow, images: list[ImageRow]
) -> None:
    make_private_dir(directory)
    write_file_durably(directory / backup.uuid, encode_manifest(codec, backup, images))


def delete_manifest(directory: Path, uuid: str) -> None:
    (directory / uuid).unlink(missing_ok=True)
    fsync_dir(directory)

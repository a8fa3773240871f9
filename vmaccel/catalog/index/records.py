"""The records the index hands out and takes: frozen dataclasses, no SQL, no engine types.

Times are UNIX seconds (UTC), sizes and offsets bytes. ``to_json``/``from_json`` of the rows
are the manifest format (``backup`` and each of ``images``; see docs/format.md): ``meta`` and
``stats`` as the JSON objects of :mod:`vmaccel.catalog.index.meta`, map roots in hex.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from vmaccel.catalog.index.meta import BackupMeta, ImageMeta, ImageStats

# Backup states: invisible while in progress; complete; being pruned; given up (gc's).
IN_PROGRESS, COMPLETE, DELETING, FAILED = "in_progress", "complete", "deleting", "failed"
# Pack states: holding chunks; being deleted by gc (its rows are gone, its file may remain).
LIVE = "live"


@dataclass(frozen=True)
class ChunkLocation:
    """Where a chunk is stored: pack name, payload offset and lengths in bytes, codec flags."""

    id: bytes
    pack: str
    offset: int
    stored_len: int
    raw_len: int
    kind: int
    flags: int
    crc: int


@dataclass(frozen=True)
class PackRow:
    """One sealed pack: its ``size`` in bytes as sealed, ``state`` ``live`` or ``deleting``."""

    id: int
    name: str
    size: int
    created: float
    state: str


@dataclass(frozen=True)
class BackupRow:
    """One backup as indexed. ``state`` is ``in_progress``, ``complete``, ``deleting`` or
    ``failed``; ``finished`` is None until it completes."""

    id: int
    uuid: str
    vm: str
    started: float
    finished: float | None
    state: str
    meta: BackupMeta = field(default_factory=BackupMeta)

    def to_json(self) -> dict[str, Any]:
        return {**_shallow(self), "meta": self.meta.to_json()}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> BackupRow:
        """Raises KeyError/TypeError/ValueError for a document that is no backup row."""
        finished = doc["finished"]
        return cls(
            int(doc["id"]),
            str(doc["uuid"]),
            str(doc["vm"]),
            float(doc["started"]),
            None if finished is None else float(finished),
            str(doc["state"]),
            BackupMeta.from_json(_object(doc.get("meta", {}))),
        )


@dataclass(frozen=True)
class BackupHead:
    """What lists page through without reading a backup's metadata: its ``id``, ``vm`` and
    ``started`` (UNIX seconds)."""

    id: int
    vm: str
    started: float


@dataclass(frozen=True)
class NewImage:
    """An image to insert: the map root (``root`` None: all holes) of ``size`` bytes in
    blocks of ``block_size`` bytes, in a tree of ``depth`` levels of ``fanout``."""

    disk: str
    size: int
    block_size: int
    fanout: int
    depth: int
    root: bytes | None
    parent_id: int | None = None
    change_id: str | None = None
    meta: ImageMeta = field(default_factory=ImageMeta)
    stats: ImageStats = field(default_factory=ImageStats)


@dataclass(frozen=True)
class ImageRow:
    """One image: the block map root of one disk in one backup. Sizes in bytes."""

    id: int
    backup_id: int
    disk: str
    size: int
    block_size: int
    fanout: int
    depth: int
    root: bytes | None
    parent_id: int | None
    change_id: str | None
    meta: ImageMeta = field(default_factory=ImageMeta)
    stats: ImageStats = field(default_factory=ImageStats)

    def to_json(self) -> dict[str, Any]:
        return {
            **_shallow(self),
            "root": self.root.hex() if self.root else None,
            "meta": self.meta.to_json(),
            "stats": self.stats.to_json(),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ImageRow:
        """Raises KeyError/TypeError/ValueError for a document that is no image row."""
        root, parent, change = doc["root"], doc.get("parent_id"), doc.get("change_id")
        return cls(
            int(doc["id"]),
            int(doc["backup_id"]),
            str(doc["disk"]),
            int(doc["size"]),
            int(doc["block_size"]),
            int(doc["fanout"]),
            int(doc["depth"]),
            bytes.fromhex(root) if root else None,
            None if parent is None else int(parent),
            None if change is None else str(change),
            ImageMeta.from_json(_object(doc.get("meta", {}))),
            ImageStats.from_json(_object(doc.get("stats", {}))),
        )


@dataclass(frozen=True, order=True)
class FileRecord:
    """One file of a listing. ``path`` is absolute within its filesystem ("/etc/passwd"),
    undecodable bytes kept with ``surrogateescape``; ``kind`` is file, dir, symlink or other;
    ``size`` in bytes; ``mtime_ns`` may be None. ``inode`` identifies the file within its
    filesystem (ext4/XFS inode, NTFS MFT record number; None on FAT and in listings stored
    before identities were kept); ``mode`` the permission bits (None where there are none)."""

    path: str
    kind: str
    size: int
    mtime_ns: int | None
    inode: int | None = None
    mode: int | None = None


def path_order(path: str) -> tuple[int, bytes]:
    """The order listings stream in (:meth:`FileIndex.listing_entries`): paths that are
    valid UTF-8 by their UTF-8 bytes, then the others (undecodable names) by their
    ``surrogatepass`` bytes, the way the catalog stores them."""
    try:
        return 0, path.encode("utf-8")
    except UnicodeEncodeError:
        return 1, path.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class VolumeListing:
    """A catalogued volume of an image: its name, filesystem type and listing id."""

    volume: str
    fstype: str | None
    listing_id: int


@dataclass(frozen=True)
class PathVersion:
    """One path in one catalogued volume of one complete backup: ``entry`` is None when the
    volume does not hold the path. ``started`` is the backup's start (UNIX seconds)."""

    backup_id: int
    vm: str
    started: float
    disk: str
    volume: str
    entry: FileRecord | None


@dataclass(frozen=True)
class FileHit:
    """A file found in a restore point. ``time`` is the backup's start (UNIX seconds)."""

    backup_id: int
    vm: str
    time: float
    disk: str
    volume: str
    path: str
    kind: str
    size: int
    mtime_ns: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _object(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a JSON object, not {type(value).__name__}")
    return value


def _shallow(record: BackupRow | ImageRow) -> dict[str, Any]:
    """The record's fields by name, values as they are: its nested records are written by
    their own ``to_json`` (``asdict`` would deep-copy them first, only to be replaced)."""
    return {f.name: getattr(record, f.name) for f in fields(record)}

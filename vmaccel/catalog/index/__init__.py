"""The catalog index: every row vmaccel keeps about packs, chunks, backups, images and files.

The seam is :mod:`~vmaccel.catalog.index.protocols` (``ChunkIndex``, ``BackupIndex``,
``LeaseIndex``, ``FileIndex``, and ``CatalogIndex`` over them all); the records it speaks are in
:mod:`~vmaccel.catalog.index.records` and :mod:`~vmaccel.catalog.index.meta`. SQLite is the
one implementation (:class:`~vmaccel.catalog.index.sqlite.Index`: ``connection`` with
``opening`` and the ``schema`` migrations, then ``chunks``, ``backups``, ``files``). All SQL of
vmaccel lives in this package; transactions are ``index.writing()``.
"""

from vmaccel.catalog.index.leases import LeaseRow
from vmaccel.catalog.index.meta import (
    BackupMeta,
    Baseline,
    ImageMeta,
    ImageStats,
    VolumeAllocation,
)
from vmaccel.catalog.index.protocols import (
    BackupIndex,
    CatalogIndex,
    ChunkIndex,
    FileIndex,
    LeaseIndex,
)
from vmaccel.catalog.index.records import (
    BackupRow,
    ChunkLocation,
    FileHit,
    FileRecord,
    ImageRow,
    NewImage,
    PackRow,
)
from vmaccel.catalog.index.sqlite import Index

__all__ = [
    "BackupIndex",
    "BackupMeta",
    "BackupRow",
    "Baseline",
    "CatalogIndex",
    "ChunkIndex",
    "ChunkLocation",
    "FileHit",
    "FileIndex",
    "FileRecord",
    "ImageMeta",
    "ImageRow",
    "ImageStats",
    "Index",
    "LeaseIndex",
    "LeaseRow",
    "NewImage",
    "PackRow",
    "VolumeAllocation",
]

"""The narrow protocol between the virtual tree and a repository.

The tree needs to know which backups exist, which disks each holds, and to read an image's
bytes; nothing else of the catalog. :class:`CatalogView` says exactly that, so the tree is
tested with an in-memory view and runs on :class:`vmaccel.fusemount.repoview.RepositoryView`.

Records are frozen dataclasses of plain data. Times are UNIX seconds (UTC), sizes bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class BackupInfo:
    """One complete backup of one VM. ``meta`` holds the saved VM configuration and stats."""

    id: int
    uuid: str
    vm: str
    started: float
    finished: float | None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class DiskInfo:
    """One image (one disk) of a backup. ``image_id`` is what :meth:`CatalogView.open_image`
    takes; ``meta`` may carry ``adapter_type``/``uuid`` for the VMDK descriptor."""

    image_id: int
    disk: str
    size: int
    change_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class ImageStream(Protocol):
    """Verified positional reads of one image; what :class:`vmaccel.catalog.imagereader.ImageReader`
    offers. ``read_into`` is thread safe and raises a ``DamageError`` rather than return
    wrong bytes; ``extents`` yields ``(offset, length, is_data)`` runs without reading data."""

    @property
    def size(self) -> int: ...

    def read_into(self, offset: int, buf: memoryview) -> int: ...

    def extents(self) -> Iterator[tuple[int, int, bool]]: ...

    def close(self) -> None: ...


class CatalogView(Protocol):
    """What the tree reads from a repository. Implementations must be thread safe: FUSE calls
    them from several threads. ``backups`` reflects new backups on every call (the tree decides
    how often to ask); ``disks`` of a complete backup never change."""

    def backups(self) -> list[BackupInfo]: ...

    def disks(self, backup_id: int) -> list[DiskInfo]: ...

    def open_image(self, image_id: int) -> ImageStream: ...

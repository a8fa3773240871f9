""":class:`RepositoryView`: the :class:`~vmaccel.fusemount.source.CatalogView` of an open
repository."""

from __future__ import annotations

import logging

from vmaccel.catalog.imagereader import ImageReader
from vmaccel.catalog.index import BackupRow, ImageRow
from vmaccel.catalog.repository import Repository
from vmaccel.fusemount.source import BackupInfo, DiskInfo
from vmaccel.vocabulary.errors import ImageNotFound

logger = logging.getLogger(__name__)


class RepositoryView:
    """Backups and images of ``repo`` as plain records.

    ``reader_options`` go to :meth:`Repository.open_image` (cache and read-ahead sizes).
    Thread safety: the catalog index serialises its queries and image readers are thread safe,
    so one view serves every FUSE thread. The view does not own ``repo``.
    """

    def __init__(self, repo: Repository, **reader_options: int) -> None:
        self.repo = repo
        self._reader_options = reader_options

    def backups(self) -> list[BackupInfo]:
        return [backup_info(row) for row in self.repo.backups()]

    def disks(self, backup_id: int) -> list[DiskInfo]:
        return [disk_info(img) for img in self.repo.images(backup_id)]

    def open_image(self, image_id: int) -> ImageReader:
        row = self.repo.image_by_id(image_id)
        if row is None:
            raise ImageNotFound(f"image {image_id} is gone from {self.repo.path} (pruned?)")
        return self.repo.open_image(row, **self._reader_options)


def backup_info(row: BackupRow) -> BackupInfo:
    return BackupInfo(row.id, row.uuid, row.vm, row.started, row.finished, row.meta.to_json())


def disk_info(img: ImageRow) -> DiskInfo:
    return DiskInfo(img.id, img.disk, img.size, img.change_id, img.meta.to_json())

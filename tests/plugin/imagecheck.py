"""Comparing a backup's image with the bytes it should hold, fast enough for 512 MiB disks.

`where=None` compares everywhere: on the union of the file's data ranges (SEEK_DATA) and the
image's data blocks, and checks that both read as zeros elsewhere by construction (holes of
both). Otherwise only on the given extents (e.g. the guest filesystems' used space).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from testbed.guestimages.mounts import data_ranges
from vmaccel.catalog import Repository
from vmaccel.catalog.index import ImageRow
from vmaccel.guestfs.allocation import build_allocation_map
from vmaccel.guestfs.extent import Extent, clip, merge

PIECE = 4 << 20


def used_extents(path: Path) -> tuple[Extent, ...]:
    """What the guest filesystems of the raw disk `path` use (the allocation map)."""
    with path.open("rb") as f:
        return build_allocation_map(f, path.stat().st_size).used


def file_data(path: Path) -> tuple[Extent, ...]:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        return merge(Extent(a, b - a) for a, b in data_ranges(fd, 0, size))
    finally:
        os.close(fd)


def images_of(repo_path: Path, vm: str) -> list[dict[str, ImageRow]]:
    """Per complete backup of `vm`, oldest first: disk name -> image."""
    with Repository.open(repo_path) as repo:
        return [{img.disk: img for img in repo.images(b)} for b in repo.backups(vm)]


def complete_backups(repo_path: Path, vm: str | None = None) -> int:
    with Repository.open(repo_path) as repo:
        return len(repo.backups(vm))


def assert_image_equals(
    repo_path: Path, image: ImageRow, expected: Path, where: Sequence[Extent] | None = None
) -> None:
    """The image reads exactly as `expected` on `where` (everywhere when None)."""
    size = expected.stat().st_size
    assert image.size == size, f"image of {image.disk} is {image.size} bytes, disk {size}"
    with Repository.open(repo_path) as repo, repo.open_image(image) as reader:
        if where is None:
            image_data = [Extent(o, n) for o, n, is_data in reader.extents() if is_data]
            where = merge([*file_data(expected), *image_data])
        fd = os.open(expected, os.O_RDONLY)
        try:
            for ext in clip(where, size):
                for pos in range(ext.offset, ext.end, PIECE):
                    n = min(PIECE, ext.end - pos)
                    want, got = os.pread(fd, n, pos), reader.pread(pos, n)
                    if want != got:
                        first = next(i for i in range(n) if want[i : i + 1] != got[i : i + 1])
                        raise AssertionError(
                            f"image {image.id} ({image.disk}) differs from {expected} at byte "
                            f"{pos + first}"
                        )
        finally:
            os.close(fd)

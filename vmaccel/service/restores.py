"""Getting data back without mounting: a disk to a file or block device, guest files and
directories into a local directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from vmaccel.service.backups import resolve_backup, resolve_disk
from vmaccel.service.context import Context
from vmaccel.vocabulary.backupref import dir_time
from vmaccel.vocabulary.errors import RestoreError

if TYPE_CHECKING:
    from vmaccel.fusemount.filerestore import FileRestoreReport
    from vmaccel.fusemount.restore import DiskRestoreReport

Tracker = Callable[[str, int], Callable[[int], None]]


def _quiet_tracker(label: str, total: int) -> Callable[[int], None]:
    return lambda n: None


def restore_disk(
    ctx: Context,
    backup: str,
    disk: str,
    to: Path,
    overwrite: bool = False,
    track: Tracker = _quiet_tracker,
) -> DiskRestoreReport:
    """Write the disk ``disk`` of ``backup`` to ``to`` (a sparse file, or a block device),
    every chunk verified; a failed restore removes the partial file it created."""
    from vmaccel.fusemount.restore import restore_disk as write_disk

    with ctx.open() as r:
        row = resolve_backup(r, backup)
        image = resolve_disk(r, row, disk)
        source = f"{row.vm} backup {row.id} ({dir_time(row.started)}) disk {image.disk}"
        advance = track(f"restore {image.disk}", image.size)
        done = [0]

        def progress(total: int) -> None:
            advance(total - done[0])
            done[0] = total

        # The restore reads in large pieces (bulk reads that decode into its buffers) and
        # overlaps them with its own writes: no read-ahead, and a cache only for the few small
        # extents, so memory stays that of its buffers whatever the disk size.
        with r.open_image(image, readahead_bytes=0, cache_bytes=0) as reader:
            return write_disk(reader, to, source, overwrite=overwrite, progress=progress)


def restore_files(
    ctx: Context, backup: str, guest_paths: list[str], to: Path, overwrite: bool = False
) -> FileRestoreReport:
    """Restore guest files and directories (recursively) into ``to``, never outside it.

    Entries that fail are listed in the report's ``failed`` and the rest restored; see
    :func:`incomplete`."""
    from vmaccel.fusemount.filerestore import restore_guest_paths
    from vmaccel.fusemount.repoview import RepositoryView

    with ctx.open() as r:
        row = resolve_backup(r, backup)
        return restore_guest_paths(RepositoryView(r), row.id, guest_paths, to, overwrite)


def incomplete(report: FileRestoreReport) -> RestoreError | None:
    """The error a file restore that left entries behind ends with (exit 9), else None."""
    from vmaccel.fusemount.filerestore import RestoreIncomplete

    if not report.failed:
        return None
    first = report.failed[0]
    return RestoreIncomplete(
        f"{len(report.failed)} entries could not be restored (first: {first.path}: {first.reason})"
    )

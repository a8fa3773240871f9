"""``vmaccel restore``: get a disk or guest files back from a backup, without mounting anything.

fusemount is imported inside the commands only, like ``vmaccel mount``: the disk restore
lives with the rest of the read side, and the CLI stays importable without libfuse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vmaccel.catalog.repository import Repository
from vmaccel.cli.options import JsonOpt, RepoOpt
from vmaccel.cli.output import emit
from vmaccel.cli.progress import byte_progress
from vmaccel.cli.settings import build_settings

app = typer.Typer(help="Restore disks or guest files from a backup.", no_args_is_help=True)

BackupArg = Annotated[
    str,
    typer.Argument(
        metavar="BACKUP", help="Backup: ID (from `backups list`), VM@latest or VM@<ISO time>."
    ),
]


@app.command("disk")
def disk(
    backup: BackupArg,
    disk_name: Annotated[str, typer.Argument(metavar="DISK", help="Disk name, e.g. disk0.")],
    to: Annotated[Path, typer.Option("--to", help="Target file or block device.")],
    repo: RepoOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write one disk image to a file (sparse) or a block device, every chunk verified."""
    from vmaccel.fusemount.backupref import resolve_backup
    from vmaccel.fusemount.restore import restore_disk
    from vmaccel.fusemount.tree import iso_time

    settings = build_settings(repo)
    with Repository.open(settings.require_repo(), settings.passphrase) as r:
        row = resolve_backup(r, backup)
        image = r.image(row, disk_name)
        source = f"{row.vm} backup {row.id} ({iso_time(row.started)}) disk {disk_name}"
        with r.open_image(image) as reader, byte_progress(not as_json) as track:
            advance = track(f"restore {disk_name}", image.size)
            done = [0]

            def progress(total: int) -> None:
                advance(total - done[0])
                done[0] = total

            report = restore_disk(reader, to, source, overwrite=force, progress=progress)
    emit(report, as_json)


@app.command("file")
def file(
    backup: BackupArg,
    guest_paths: Annotated[
        list[str],
        typer.Argument(
            metavar="GUEST_PATH...",
            help="<volume>/<path> as under the mount's files/ (e.g. p1/etc/nginx); the volume "
            "may be left out when only one volume holds the path.",
        ),
    ],
    to: Annotated[Path, typer.Option("--to", help="Directory to restore into (made if missing).")],
    repo: RepoOpt = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing files and symlinks.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Restore guest files and directories (recursively) into a directory, never outside it."""
    from vmaccel.fusemount.backupref import resolve_backup
    from vmaccel.fusemount.filerestore import RestoreIncomplete, restore_guest_paths
    from vmaccel.fusemount.repoview import RepositoryView

    settings = build_settings(repo)
    with Repository.open(settings.require_repo(), settings.passphrase) as r:
        row = resolve_backup(r, backup)
        report = restore_guest_paths(RepositoryView(r), row.id, guest_paths, to, overwrite)
    emit(report, as_json)
    if report.failed:
        raise RestoreIncomplete(
            f"{len(report.failed)} entries could not be restored (first: "
            f"{report.failed[0].path}: {report.failed[0].reason})"
        )

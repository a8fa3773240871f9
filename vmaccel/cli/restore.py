"""``vmaccel restore``: get a disk or guest files back from a backup, without mounting."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vmaccel.cli.options import BackupArg, JsonOpt, RepoOpt
from vmaccel.cli.output import emit
from vmaccel.cli.progress import byte_progress
from vmaccel.cli.settings import context
from vmaccel.service import restores

app = typer.Typer(help="Restore disks or guest files from a backup.", no_args_is_help=True)


@app.command("disk")
def disk(
    backup: BackupArg,
    disk_name: Annotated[
        str,
        typer.Argument(
            metavar="DISK", help="Disk: name (disk-2000, disk0), key, label or unit (scsi0:1)."
        ),
    ],
    to: Annotated[Path, typer.Option("--to", help="Target file or block device.")],
    repo: RepoOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write one disk image to a file (sparse) or a block device, every chunk verified."""
    with byte_progress(not as_json) as track:
        report = restores.restore_disk(context(repo), backup, disk_name, to, force, track)
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
    report = restores.restore_files(context(repo), backup, guest_paths, to, overwrite)
    emit(report, as_json)
    failed = restores.incomplete(report)
    if failed is not None:
        raise failed

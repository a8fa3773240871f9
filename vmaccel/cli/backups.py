"""``vmaccel backups list|show``: the restore points in a repository."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from vmaccel.cli.options import BackupArg, JsonOpt, RepoOpt
from vmaccel.cli.output import console, print_json, say
from vmaccel.cli.settings import context
from vmaccel.service import backups
from vmaccel.vocabulary.units import format_bytes

app = typer.Typer(help="List and inspect backups.", no_args_is_help=True)


@app.command("list")
def list_backups(
    repo: RepoOpt = None,
    vm: Annotated[str | None, typer.Option("--vm", help="Only this VM.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Complete backups, oldest first."""
    found = backups.list_backups(context(repo), vm)
    if as_json:
        print_json([b.to_dict() for b in found])
        return
    table = Table("id", "vm", "time (UTC)", "disks", "size", "new stored")
    for b in found:
        row = b.backup
        table.add_row(
            str(row.id),
            row.vm,
            b.time,
            str(len(b.images)),
            format_bytes(b.size),
            format_bytes(b.stored_bytes),
        )
    console.print(table)


@app.command("show")
def show(backup: BackupArg, repo: RepoOpt = None, as_json: JsonOpt = False) -> None:
    """One backup in detail: its images, modes, changeIds and metadata."""
    b = backups.show_backup(context(repo), backup)
    if as_json:
        print_json(b.to_dict())
        return
    say(f"backup {b.backup.id} of {b.backup.vm} at {b.time} ({b.backup.uuid})")
    for img in b.images:
        say(
            f"  {img.disk}: {format_bytes(img.size)}, {img.meta.mode or '?'}, "
            f"changeId {img.change_id or '-'}"
        )

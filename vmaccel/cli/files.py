"""``vmaccel files find``: which restore points hold a file, without mounting anything."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from vmaccel.catalog.filecatalog import find_files
from vmaccel.catalog.repository import Repository
from vmaccel.cli.backups import iso
from vmaccel.cli.options import JsonOpt, RepoOpt
from vmaccel.cli.output import console, print_json
from vmaccel.cli.settings import build_settings
from vmaccel.plugin.job.report import human_bytes

app = typer.Typer(help="Search the file catalog of every backup.", no_args_is_help=True)


@app.command("find")
def find(
    pattern: Annotated[str, typer.Argument(help="Glob: nginx.conf, '/etc/*.conf', '*.log'.")],
    repo: RepoOpt = None,
    vm: Annotated[str | None, typer.Option("--vm", help="Only this VM.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many hits.")] = 1000,
    as_json: JsonOpt = False,
) -> None:
    """List every restore point holding a matching path, with its size and mtime."""
    settings = build_settings(repo)
    with Repository.open(settings.require_repo(), settings.passphrase) as r:
        hits = find_files(r.index, pattern, vm, limit)
    if as_json:
        print_json([h.to_dict() for h in hits])
        return
    table = Table("backup", "vm", "time (UTC)", "disk", "volume", "path", "size", "mtime (UTC)")
    for h in hits:
        mtime = iso(h.mtime_ns / 1e9) if h.mtime_ns is not None else "-"
        table.add_row(
            str(h.backup_id),
            h.vm,
            iso(h.time),
            h.disk,
            h.volume,
            h.path,
            human_bytes(h.size) if h.kind == "file" else h.kind,
            mtime,
        )
    console.print(table)
    if not hits:
        console.print(f"no file matches {pattern!r}", highlight=False)

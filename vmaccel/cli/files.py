"""``vmaccel files find``: which restore points hold a file, without mounting anything."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from vmaccel.cli.options import JsonOpt, RepoOpt
from vmaccel.cli.output import console, print_json, say
from vmaccel.cli.settings import context
from vmaccel.service import browse
from vmaccel.vocabulary.backupref import dir_time
from vmaccel.vocabulary.units import format_bytes

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
    hits = browse.find_files(context(repo), pattern, vm, limit)
    if as_json:
        print_json([h.to_dict() for h in hits])
        return
    table = Table("backup", "vm", "time (UTC)", "disk", "volume", "path", "size", "mtime (UTC)")
    for h in hits:
        mtime = dir_time(h.mtime_ns / 1e9) if h.mtime_ns is not None else "-"
        size = format_bytes(h.size) if h.kind == "file" else h.kind
        table.add_row(
            str(h.backup_id), h.vm, dir_time(h.time), h.disk, h.volume, h.path, size, mtime
        )
    console.print(table)
    if not hits:
        say(f"no file matches {pattern!r}")

"""``vmaccel files find|diff|history``: which restore points hold a file and what changed
between them, from the file catalog (nothing mounted, no data read)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from vmaccel.catalog.filediff import FileChange, PathEvent, VolumeDiff
from vmaccel.cli.options import JsonOpt, RepoOpt
from vmaccel.cli.output import console, print_json, say
from vmaccel.cli.settings import context
from vmaccel.service import browse
from vmaccel.service import files as files_service
from vmaccel.vocabulary.backupref import dir_time
from vmaccel.vocabulary.units import format_bytes

app = typer.Typer(
    help="Search the file catalog of every backup; compare restore points file by file.",
    no_args_is_help=True,
)
VmOpt = Annotated[str | None, typer.Option("--vm", help="Only this VM.")]


@app.command("find")
def find(
    pattern: Annotated[str, typer.Argument(help="Glob: nginx.conf, '/etc/*.conf', '*.log'.")],
    repo: RepoOpt = None,
    vm: VmOpt = None,
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
            str(h.backup_id), h.vm, dir_time(h.time), h.disk, h.volume, shown(h.path), size, mtime
        )
    console.print(table)
    if not hits:
        say(f"no file matches {pattern!r}")


@app.command("diff")
def diff(
    a: Annotated[str, typer.Argument(metavar="A", help="The older backup (any reference).")],
    b: Annotated[
        str | None,
        typer.Argument(metavar="[B]", help="The newer backup (default: the one after A)."),
    ] = None,
    repo: RepoOpt = None,
    vm: Annotated[
        str | None, typer.Option("--vm", help="References are this VM's (A may be @latest).")
    ] = None,
    path: Annotated[
        str | None, typer.Option("--path", help="Only this directory (or file) and below.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Files added, removed, modified, renamed or changed in type, per volume."""
    report = files_service.diff_files(context(repo), a, b, vm, path)
    if as_json:
        print_json(report.to_dict())
        return
    say(
        f"backup {report.a.backup_id} ({dir_time(report.a.started)}) -> "
        f"backup {report.b.backup_id} ({dir_time(report.b.started)})"
    )
    for vol in report.volumes:
        _print_volume(vol)


@app.command("history")
def history(
    path: Annotated[str, typer.Argument(help="Absolute path within its volume: /etc/hosts.")],
    repo: RepoOpt = None,
    vm: VmOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every restore point where PATH appeared, changed or disappeared, newest first."""
    report = files_service.file_history(context(repo), path, vm)
    if as_json:
        print_json(report.to_dict())
        return
    table = Table("backup", "vm", "time (UTC)", "disk", "volume", "change", "size", "mtime (UTC)")
    for e in report.events:
        table.add_row(
            str(e.backup_id),
            e.vm,
            dir_time(e.started),
            e.disk,
            e.volume,
            _event_text(e),
            *_size_mtime(e),
        )
    console.print(table)
    if not report.events:
        say(f"{shown(report.path)} is in no catalogued restore point")


def shown(path: str) -> str:
    """A guest path for people: as is when printable, else escaped (newlines, bad bytes)."""
    return path if path.isprintable() else repr(path)[1:-1]


def _print_volume(vol: VolumeDiff) -> None:
    where = f"{vol.disk} {vol.volume}".strip() + (f" ({vol.fstype})" if vol.fstype else "")
    if vol.status != "compared":
        say(f"{where}: " + ("unchanged" if vol.status == "identical" else f"{vol.reason}"))
        return
    counts = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in vol.counts().items() if n)
    say(f"{where}: {counts or 'unchanged'}")
    for c in vol.changes:
        say(f"  {_MARK[c.change]} {_change_text(c)}")


_MARK = {"added": "+", "removed": "-", "modified": "M", "type_changed": "T", "renamed": "R"}


def _change_text(c: FileChange) -> str:
    if c.old_path is not None:
        return f"{shown(c.old_path)} -> {shown(c.path)}"
    if c.change == "type_changed" and c.old is not None and c.new is not None:
        return f"{shown(c.path)} ({c.old.kind} -> {c.new.kind})"
    return shown(c.path) + (f" ({', '.join(c.fields)})" if c.fields else "")


def _event_text(e: PathEvent) -> str:
    return e.change + (f" ({', '.join(e.fields)})" if e.fields else "")


def _size_mtime(e: PathEvent) -> tuple[str, str]:
    if e.entry is None:
        return "-", "-"
    size = format_bytes(e.entry.size) if e.entry.kind == "file" else e.entry.kind
    mtime = dir_time(e.entry.mtime_ns / 1e9) if e.entry.mtime_ns is not None else "-"
    return size, mtime

"""``vmaccel backups list|show``: the restore points in a repository."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.table import Table

from vmaccel.catalog.repository import Repository
from vmaccel.cli.options import JsonOpt, RepoOpt
from vmaccel.cli.output import console, print_json
from vmaccel.cli.settings import build_settings
from vmaccel.plugin.job.report import human_bytes

app = typer.Typer(help="List and inspect backups.", no_args_is_help=True)


def iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


@app.command("list")
def list_backups(
    repo: RepoOpt = None,
    vm: Annotated[str | None, typer.Option("--vm", help="Only this VM.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Complete backups, oldest first."""
    settings = build_settings(repo)
    with Repository.open(settings.require_repo(), settings.passphrase) as r:
        rows = [(b, r.images(b)) for b in r.backups(vm)]
    if as_json:
        print_json([_backup_dict(b, imgs) for b, imgs in rows])
        return
    table = Table("id", "vm", "time (UTC)", "disks", "size", "new stored")
    for b, imgs in rows:
        table.add_row(
            str(b.id),
            b.vm,
            iso(b.started),
            str(len(imgs)),
            human_bytes(sum(i.size for i in imgs)),
            human_bytes(sum(i.stats.get("stored_bytes", 0) for i in imgs)),
        )
    console.print(table)


@app.command("show")
def show(backup: str, repo: RepoOpt = None, as_json: JsonOpt = False) -> None:
    """One backup in detail: its images, modes, changeIds and metadata."""
    settings = build_settings(repo)
    with Repository.open(settings.require_repo(), settings.passphrase) as r:
        b = r.backup(backup)
        doc = _backup_dict(b, r.images(b))
    if as_json:
        print_json(doc)
        return
    console.print(f"backup {b.id} of {b.vm} at {iso(b.started)} ({b.uuid})", highlight=False)
    for img in doc["images"]:
        console.print(
            f"  {img['disk']}: {human_bytes(img['size'])}, {img['meta'].get('mode', '?')}, "
            f"changeId {img['change_id'] or '-'}",
            highlight=False,
        )


def _backup_dict(b: Any, images: list[Any]) -> dict[str, Any]:
    doc = asdict(b)
    doc["time"] = iso(b.started)
    # The block map's shape (root node, fanout, depth) is storage internals, not the schema.
    doc["images"] = [{k: v for k, v in asdict(i).items() if k not in _INTERNAL} for i in images]
    return doc


_INTERNAL = frozenset({"root", "fanout", "depth"})

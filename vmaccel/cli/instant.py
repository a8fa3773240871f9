"""``vmaccel instant``: Instant recovery: run a VM from a backup over NFS."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table

from vmaccel.cli.options import JsonOpt, RepoOpt
from vmaccel.cli.output import console, print_json, say
from vmaccel.cli.settings import context
from vmaccel.service import instant as service
from vmaccel.vocabulary.errors import UsageError
from vmaccel.vocabulary.units import format_bytes

app = typer.Typer(help="Instant recovery: run a VM from a backup over NFS.", no_args_is_help=True)

_NameArg = Annotated[str, typer.Argument(help="The session (the instant VM's name).")]


@app.command("start")
def start(
    backup: Annotated[str, typer.Argument(help="ID, VM@latest, VM@-N or VM@<time>.")],
    vcenter: Annotated[str, typer.Option("--vcenter", help="The vCenter (vmaccel vcenter add).")],
    host: Annotated[str, typer.Option("--host", help="The ESXi host that mounts the export.")],
    name: Annotated[
        str | None, typer.Option("--name", help="The VM's name (default: <vm>-instant).")
    ] = None,
    network: Annotated[
        list[str] | None,
        typer.Option("--network", metavar="OLD=NEW", help="Move NICs of OLD to NEW (repeatable)."),
    ] = None,
    datastore: Annotated[
        str | None,
        typer.Option("--datastore", help="The VM's home (config, swap, logs); default: the "
                     "saved one. Its disks stay on the backup's NFS datastore."),
    ] = None,
    power_on: Annotated[bool, typer.Option("--power-on", help="Power the VM on.")] = False,
    repo: RepoOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a backed-up VM now, from the backup over NFS; guest writes go to an overlay."""
    pairs = {}
    for spec in network or ():
        old, sep, new = spec.partition("=")
        if not sep or not old or not new:
            raise UsageError(f"--network {spec!r} is not OLD=NEW")
        pairs[old] = new
    request = service.StartRequest(
        backup, vcenter, host, name=name, datastore=datastore, networks=pairs, power_on=power_on
    )
    s = service.start(context(repo), request)
    if as_json:
        print_json(asdict(s))
        return
    say(f"instant VM {s.name} is {'running' if power_on else 'registered'} on {host} from "
        f"datastore {s.datastore} (backup {s.backup_id} of {s.source_vm})")
    say(f"move it with: vmaccel instant migrate {s.name} --datastore DS; "
        f"end it with: vmaccel instant stop {s.name}")


@app.command("list")
def list_sessions(as_json: JsonOpt = False) -> None:
    """Instant sessions: state, VM, datastore, overlay size."""
    views = service.list_sessions(context(None))
    if as_json:
        print_json([{**asdict(v.session), "overlay_bytes": v.overlay_bytes,
                     "mount_alive": v.mount_alive} for v in views])
        return
    table = Table("session", "state", "backup", "host", "datastore", "overlay", "mount")
    for v in views:
        s = v.session
        table.add_row(s.name, s.state, f"{s.backup_id} ({s.source_vm})", s.host,
                      s.datastore or "-", format_bytes(v.overlay_bytes),
                      "up" if v.mount_alive else "down")
    console.print(table)


@app.command("migrate")
def migrate(
    name: _NameArg,
    datastore: Annotated[str, typer.Option("--datastore", help="The production datastore.")],
) -> None:
    """Move the running VM to DATASTORE (Storage vMotion); the session then ends itself."""
    service.migrate(context(None), name, datastore)
    say(f"{name} now runs from {datastore}; the instant session has ended")


@app.command("stop")
def stop(
    name: _NameArg,
    keep_overlay: Annotated[
        bool, typer.Option("--keep-overlay", help="Keep the guest writes (the overlay).")
    ] = False,
) -> None:
    """Power off and remove the VM, the datastore, the export, the mount (and the overlay)."""
    service.stop(context(None), name, keep_overlay)
    say(f"instant session {name} stopped" + (" (overlay kept)" if keep_overlay else ""))

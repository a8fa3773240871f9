"""``vmaccel backup``: back up VMs from vCenter, or one disk with no vCenter (``--source``)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from vmaccel.cli import signals
from vmaccel.cli.options import JsonOpt, LockWaitOpt, RepoOpt
from vmaccel.cli.output import console, emit, say, warn
from vmaccel.cli.progress import byte_progress
from vmaccel.cli.settings import context
from vmaccel.plugin.engine.report import RunReport
from vmaccel.service.limits import VMS_AT_ONCE
from vmaccel.service.runs import (
    BackupRequest,
    RunOptions,
    VmSelection,
    parse_datastore_paths,
    run_backup,
)
from vmaccel.vocabulary.errors import Interrupted
from vmaccel.vocabulary.units import format_bytes, format_duration

FAILED_EXIT = 1


_Many = list[str] | None
_VCenterOpt = Annotated[str | None, typer.Option("--vcenter", help="A vCenter from `vcenter add`.")]
_VmOpt = Annotated[_Many, typer.Option("--vm", help="VM name (repeatable).")]
_FolderOpt = Annotated[
    _Many, typer.Option("--folder", help="Folder path, e.g. /DC0/vm/prod (repeatable).")
]
_TagOpt = Annotated[
    _Many, typer.Option("--tag", help="CATEGORY:TAG (repeatable; VMs matching any).")
]
_ExcludeVmOpt = Annotated[_Many, typer.Option("--exclude-vm", help="Name pattern to leave out.")]
_ExcludeDiskOpt = Annotated[
    _Many,
    typer.Option("--exclude-disk", help="VM:DISK (name, key, disk-KEY, label or unit: scsi0:1)."),
]
_TransportOpt = Annotated[str, typer.Option("--transport", help="auto, nbd, http or file.")]
_DatastorePathOpt = Annotated[
    _Many,
    typer.Option("--datastore-path", metavar="DS=DIR", help="Local mount of a datastore (file)."),
]
_NbdCommandOpt = Annotated[
    str | None,
    typer.Option(
        "--nbd-command",
        help="NBD server command template, e.g. 'nbdkit -s -r vddk ... file={file} "
        "snapshot={snapshot}'.",
    ),
]
_ParallelOpt = Annotated[
    int, typer.Option("--parallel", min=1, help="VMs backed up at once (at most 4 per datastore).")
]
_RescanOpt = Annotated[
    bool, typer.Option("--rescan", help="Read every allocated block and audit CBT.")
]
_NoQuiesceOpt = Annotated[bool, typer.Option("--no-quiesce", help="Crash-consistent snapshots.")]
_SourceOpt = Annotated[
    str | None,
    typer.Option("--source", metavar="file:PATH|nbd:URI", help="Back up one disk, no vCenter."),
]
_NameOpt = Annotated[str | None, typer.Option("--name", help="Name for a --source backup.")]
_NoSkipFreeOpt = Annotated[
    bool, typer.Option("--no-skip-free", help="Also read blocks the guest does not use.")
]
_NoFileIndexOpt = Annotated[
    bool, typer.Option("--no-file-index", help="Do not add the guest files to the catalog.")
]


def backup(
    repo: RepoOpt = None,
    vcenter: _VCenterOpt = None,
    vm: _VmOpt = None,
    folder: _FolderOpt = None,
    tag: _TagOpt = None,
    exclude_vm: _ExcludeVmOpt = None,
    exclude_disk: _ExcludeDiskOpt = None,
    transport: _TransportOpt = "auto",
    datastore_path: _DatastorePathOpt = None,
    nbd_command: _NbdCommandOpt = None,
    parallel: _ParallelOpt = VMS_AT_ONCE,
    rescan: _RescanOpt = False,
    no_quiesce: _NoQuiesceOpt = False,
    source: _SourceOpt = None,
    name: _NameOpt = None,
    no_skip_free: _NoSkipFreeOpt = False,
    no_file_index: _NoFileIndexOpt = False,
    lock_wait: LockWaitOpt = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Take backups: every backup is a full restore point, read as an incremental."""
    options = RunOptions(
        transport,
        parse_datastore_paths(tuple(datastore_path or ())),
        nbd_command,
        not no_quiesce,
        not no_skip_free,
        rescan,
        tuple(exclude_disk or ()),
        parallel,
        not no_file_index,
    )
    selection = VmSelection(
        tuple(vm or ()), tuple(folder or ()), tuple(tag or ()), tuple(exclude_vm or ())
    )
    request = BackupRequest(vcenter, selection, source, name, options)
    with byte_progress(not as_json) as track, signals.stopping() as cancel:
        report = run_backup(context(repo, lock_wait), request, track, warn, cancel)
    if as_json:
        emit(report, as_json)
    else:
        render(report)
    if cancel.requested:
        raise Interrupted(cancel.reason)
    if not report.ok:
        raise typer.Exit(report.exit_code or FAILED_EXIT)


def render(report: RunReport) -> None:
    """The per-disk summary table, then one line per warning and error."""
    table = Table("VM", "disk", "mode", "read / size", "new stored", "time", title="backup summary")
    for vm in report.vms:
        for d in vm.disks:
            table.add_row(
                vm.vm,
                d.disk,
                d.mode,
                f"{format_bytes(d.bytes_read)} / {format_bytes(d.size)} ({d.read_fraction:.1%})",
                format_bytes(d.stored_bytes),
                format_duration(d.duration),
            )
        if not vm.disks:
            table.add_row(vm.vm, "-", "failed", "-", "-", format_duration(vm.duration))
    console.print(table)
    for vm in report.vms:
        state = f"backup {vm.backup_id}, {vm.consistency}" if vm.ok else "FAILED"
        seconds = vm.catalog_seconds
        catalog = f", file catalog {format_duration(seconds)}" if seconds >= 0.05 else ""
        say(f"{vm.vm}: {state} ({format_duration(vm.duration)}{catalog})")
        for d in vm.disks:
            say(f"  {d.disk}: {d.mode}: {d.reason}")
            for w in d.warnings:
                say(f"  warning: {d.disk}: {w}")
        for w in vm.warnings:
            say(f"  warning: {w}")
        if vm.error:
            warn(f"  error: {vm.error}")


def register(app: typer.Typer) -> None:
    """Adds ``backup`` to the root command."""
    app.command("backup")(backup)

"""``vmaccel backup``: back up VMs from vCenter, or one disk with no vCenter (``--source``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from vmaccel.catalog.repository import Repository
from vmaccel.cli.options import JsonOpt, LockWaitOpt, RepoOpt
from vmaccel.cli.output import console, emit, err_console
from vmaccel.cli.progress import Tracker, byte_progress
from vmaccel.cli.settings import Settings, build_settings
from vmaccel.plugin.job.report import RunReport, VmReport, human_bytes
from vmaccel.plugin.job.selection import Selection, missing_names, select
from vmaccel.plugin.registry import Registry
from vmaccel.vocabulary.errors import NotFound, UsageError

if TYPE_CHECKING:
    from vmaccel.plugin.job.vmjob import VmBackupOptions

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
    _Many, typer.Option("--exclude-disk", help="VM:DISK (label, key or disk-KEY).")
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
_ParallelOpt = Annotated[int, typer.Option("--parallel", min=1, help="VMs backed up at once.")]
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
    parallel: _ParallelOpt = 1,
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
    settings = build_settings(repo, lock_wait)
    if (source is None) == (vcenter is None):
        raise UsageError("give either --vcenter NAME with a VM selection, or --source")
    with (
        Repository.open(
            settings.require_repo(), settings.passphrase, write=True, lock_wait=settings.lock_wait
        ) as r,
        byte_progress(not as_json) as track,
    ):
        if source is not None:
            report = RunReport(
                (_standalone(r, source, name, not no_skip_free, not no_file_index, track),)
            )
        else:
            assert vcenter is not None  # noqa: S101 - narrows the type for mypy; --source or --vcenter was checked above
            sel = Selection(
                tuple(vm or ()), tuple(folder or ()), frozenset(), tuple(exclude_vm or ())
            )
            opts = _options(
                transport,
                datastore_path,
                nbd_command,
                not no_quiesce,
                not no_skip_free,
                rescan,
                exclude_disk,
                parallel,
                not no_file_index,
            )
            report = _vcenter(settings, r, vcenter, sel, tuple(tag or ()), opts, track)
    if as_json:
        emit(report, as_json)
    else:
        render(report)
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
                f"{human_bytes(d.bytes_read)} / {human_bytes(d.size)} ({d.read_fraction:.1%})",
                human_bytes(d.stored_bytes),
                f"{d.duration:.1f} s",
            )
        if not vm.disks:
            table.add_row(vm.vm, "-", "failed", "-", "-", f"{vm.duration:.1f} s")
    console.print(table)
    for vm in report.vms:
        state = f"backup {vm.backup_id}, {vm.consistency}" if vm.ok else "FAILED"
        catalog = f", file catalog {vm.catalog_seconds:.1f} s" if vm.catalog_seconds >= 0.05 else ""
        console.print(
            f"{vm.vm}: {state} ({vm.duration:.1f} s{catalog})", highlight=False, markup=False
        )
        for d in vm.disks:
            console.print(f"  {d.disk}: {d.mode}: {d.reason}", highlight=False, markup=False)
            for w in d.warnings:
                console.print(f"  warning: {d.disk}: {w}", highlight=False, markup=False)
        for w in vm.warnings:
            console.print(f"  warning: {w}", highlight=False, markup=False)
        if vm.error:
            # soft_wrap: the error stays one line (stderr is no terminal: 80 columns)
            err_console.print(f"  error: {vm.error}", highlight=False, markup=False, soft_wrap=True)


def _standalone(
    r: Repository, source: str, name: str | None, vray: bool, file_index: bool, track: Tracker
) -> VmReport:
    from vmaccel.plugin.job.standalone import (
        back_up_source,
        default_name,
        open_source,
        parse_source,
    )

    kind, _ = parse_source(source)
    src = open_source(source)
    try:
        vm = name or default_name(source)
        return back_up_source(
            r, src, vm, kind, vray=vray, progress=track(vm, src.size), file_index=file_index
        )
    finally:
        src.close()


def _options(
    transport: str,
    datastore_path: list[str] | None,
    nbd_command: str | None,
    quiesce: bool,
    vray: bool,
    rescan: bool,
    exclude_disk: list[str] | None,
    parallel: int,
    file_index: bool,
) -> VmBackupOptions:
    from vmaccel.plugin.job.transports import TransportConfig
    from vmaccel.plugin.job.vmjob import VmBackupOptions

    return VmBackupOptions(
        transport=TransportConfig(transport, _datastore_paths(datastore_path), nbd_command),
        quiesce=quiesce,
        vray=vray,
        rescan=rescan,
        exclude_disks=frozenset(exclude_disk or ()),
        parallel=parallel,
        file_index=file_index,
    )


def _vcenter(
    settings: Settings,
    r: Repository,
    name: str,
    sel: Selection,
    tags: tuple[str, ...],
    opts: VmBackupOptions,
    track: Tracker,
) -> RunReport:
    # The vSphere SDKs load only for vCenter backups (start-up cost of plain --source runs).
    from vmaccel.plugin.job.vmjob import run_backups
    from vmaccel.plugin.vcenter.connection import VCenter
    from vmaccel.plugin.vcenter.inventory import list_vms

    endpoint = Registry(settings.config_dir).endpoint(name, settings.env)
    if tags:
        from vmaccel.plugin.vcenter.tags import TagDirectory

        directory = TagDirectory(endpoint)
        ids = directory.tag_ids(tags)
        sel = Selection(
            sel.names, sel.folders, frozenset(directory.tagged_vms(list(ids.values()))), sel.exclude
        )
    if sel.empty and not tags:
        raise UsageError("select VMs with --vm, --folder or --tag")
    with VCenter(endpoint) as vc:
        # Full properties only for the VMs asked for; the rest of the inventory by name.
        inventory = list_vms(vc, sel.wants)
        missing = missing_names(inventory, sel)
        if missing:
            raise NotFound(f"no VM named {', '.join(map(repr, missing))} in vCenter {name}")
        chosen, skipped = select(inventory, sel)
        for vm_name, why in skipped:
            err_console.print(
                f"skipping {vm_name}: {why}", highlight=False, markup=False, soft_wrap=True
            )
        if not chosen:
            raise NotFound("the selection matches no VM that can be backed up")
        return run_backups(vc, r, chosen, opts, track)


def _datastore_paths(specs: list[str] | None) -> dict[str, Path]:
    out = {}
    for spec in specs or ():
        ds, sep, path = spec.partition("=")
        if not sep or not ds or not path:
            raise UsageError(f"--datastore-path {spec!r} is not DATASTORE=DIR")
        out[ds] = Path(path)
    return out

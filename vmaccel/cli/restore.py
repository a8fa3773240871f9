"""``vmaccel restore``: get a disk or guest files back from a backup, without mounting, or a
whole VM back into vSphere (new, replacing, one disk into a VM, or rolled back in place)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from vmaccel.cli.options import BackupArg, JsonOpt, RepoOpt
from vmaccel.cli.output import emit
from vmaccel.cli.progress import byte_progress
from vmaccel.cli.settings import context
from vmaccel.service import restores
from vmaccel.service.runs import parse_datastore_paths
from vmaccel.service.vmrestores import VmRestoreRequest, restore_vm
from vmaccel.vocabulary.errors import UsageError

app = typer.Typer(
    help="Restore disks, guest files or whole VMs from a backup.", no_args_is_help=True
)

_Opt = typer.Option
_Text = str | None
_Many = list[str] | None
_VCenterOpt = Annotated[str, _Opt("--vcenter", help="A vCenter from `vcenter add`.")]
_NameOpt = Annotated[_Text, _Opt("--name", help="Name of the new VM (default: the backed-up one).")]
_FolderOpt = Annotated[_Text, _Opt("--folder", help="VM folder path, e.g. /DC0/vm/restored.")]
_HostOpt = Annotated[_Text, _Opt("--host", help="Host to place the VM on.")]
_ClusterOpt = Annotated[_Text, _Opt("--cluster", help="Cluster to place the VM in.")]
_PoolOpt = Annotated[_Text, _Opt("--resource-pool", help="Resource pool (name).")]
_DatastoreOpt = Annotated[
    _Text, _Opt("--datastore", help="Datastore for the VM and its disks (default: the saved one).")
]
_NetworkOpt = Annotated[
    _Many,
    _Opt("--network", metavar="OLD=NEW", help="Move NICs of network OLD to NEW (repeatable)."),
]
_DiskOpt = Annotated[
    _Many, _Opt("--disk", help="Restore only this disk (repeatable; name, key, label or unit).")
]
_PowerOnOpt = Annotated[bool, _Opt("--power-on", help="Power the VM on afterwards.")]
_KeepIdOpt = Annotated[
    bool, _Opt("--keep-identity", help="Keep the instance UUID and MAC addresses.")
]
_OverwriteOpt = Annotated[
    bool,
    _Opt("--overwrite", help="Replace a VM of that name, once the new one is complete."),
]
_IntoVmOpt = Annotated[
    _Text, _Opt("--into-vm", help="Add the one --disk to this existing VM as a new disk.")
]
_InPlaceOpt = Annotated[
    bool, _Opt("--in-place", help="Roll the VM back: write only what changed since (CBT).")
]
_YesOpt = Annotated[bool, _Opt("--yes", "-y", help="Power the VM off without asking.")]
_TransportOpt = Annotated[str, _Opt("--transport", help="auto, nbd, http or file.")]
_DatastorePathOpt = Annotated[
    _Many,
    _Opt("--datastore-path", metavar="DS=DIR", help="Local mount of a datastore (file)."),
]
_NbdCommandOpt = Annotated[
    _Text,
    _Opt(
        "--nbd-command",
        help="NBD server command template (write mode), e.g. 'nbdkit -s vddk ... file={file}'.",
    ),
]


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


@app.command("vm")
def vm(
    backup: BackupArg,
    vcenter: _VCenterOpt,
    name: _NameOpt = None,
    folder: _FolderOpt = None,
    host: _HostOpt = None,
    cluster: _ClusterOpt = None,
    resource_pool: _PoolOpt = None,
    datastore: _DatastoreOpt = None,
    network: _NetworkOpt = None,
    disk_names: _DiskOpt = None,
    power_on: _PowerOnOpt = False,
    keep_identity: _KeepIdOpt = False,
    overwrite: _OverwriteOpt = False,
    into_vm: _IntoVmOpt = None,
    in_place: _InPlaceOpt = False,
    yes: _YesOpt = False,
    transport: _TransportOpt = "auto",
    datastore_path: _DatastorePathOpt = None,
    nbd_command: _NbdCommandOpt = None,
    repo: RepoOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Bring a VM back into vSphere: as a new VM (or replacing one), one disk into an existing
    VM (--into-vm), or rolled back in place writing only what changed since (--in-place)."""
    request = VmRestoreRequest(
        backup=backup,
        vcenter=vcenter,
        name=name,
        folder=folder,
        host=host,
        cluster=cluster,
        resource_pool=resource_pool,
        datastore=datastore,
        networks=tuple(_pair(n) for n in network or ()),
        disks=tuple(disk_names or ()),
        power_on=power_on,
        keep_identity=keep_identity,
        overwrite=overwrite,
        into_vm=into_vm,
        in_place=in_place,
        transport=transport,
        datastore_paths=parse_datastore_paths(tuple(datastore_path or ())),
        nbd_command=nbd_command,
    )
    with byte_progress(not as_json) as track:
        report = restore_vm(context(repo), request, track, _confirmer(yes))
    emit(report, as_json)


def _pair(spec: str) -> tuple[str, str]:
    old, sep, new = spec.partition("=")
    if not sep or not old or not new:
        raise UsageError(f"--network {spec!r} is not OLD=NEW")
    return old, new


def _confirmer(yes: bool) -> Callable[[str], bool]:
    """Yes with --yes; else ask on a terminal; without one, refuse with what to pass."""

    def ask(question: str) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            raise UsageError(f"{question} Pass --yes (no terminal to ask on)")
        return bool(typer.confirm(question, default=False))

    return ask

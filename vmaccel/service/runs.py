"""Take backups: of VMs from a registered vCenter, or of one disk without vCenter.

The vSphere SDKs load only for vCenter runs, and the job modules only when a run starts, so
the commands that never back up pay for neither.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vmaccel.catalog.repository import Repository
from vmaccel.plugin.engine.report import RunReport, VmReport
from vmaccel.plugin.engine.selection import Selection, missing_names, select
from vmaccel.plugin.registry import Registry
from vmaccel.service.cancel import Cancel
from vmaccel.service.context import Context
from vmaccel.service.limits import VMS_AT_ONCE, DatastoreSlots
from vmaccel.vocabulary.errors import NotFound, UsageError

if TYPE_CHECKING:
    from vmaccel.plugin.engine.vmjob import VmBackupOptions
    from vmaccel.plugin.vcenter.models import Endpoint

Tracker = Callable[[str, int], Callable[[int], None]]
"""``track(label, total_bytes) -> advance(n_bytes)``: how a run reports progress."""
Notice = Callable[[str], None]
"""Receives one line for the operator (e.g. a VM the selection skips and why)."""


def _quiet_tracker(label: str, total: int) -> Callable[[int], None]:
    return lambda n: None


@dataclass(frozen=True)
class VmSelection:
    """Which VMs: by name, folder path or ``CATEGORY:TAG`` (any matching), minus name
    patterns. Empty means nothing: a run must say what it backs up."""

    vms: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    exclude_vms: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunOptions:
    """How disks are read and stored. ``datastore_paths``: datastore name -> local mount
    (file transport); ``exclude_disks``: ``VM:DISK`` texts; ``parallel``: VMs at once (>= 1)."""

    transport: str = "auto"
    datastore_paths: tuple[tuple[str, Path], ...] = ()
    nbd_command: str | None = None
    quiesce: bool = True
    skip_free: bool = True
    rescan: bool = False
    exclude_disks: tuple[str, ...] = ()
    parallel: int = VMS_AT_ONCE
    file_index: bool = True


@dataclass(frozen=True)
class BackupRequest:
    """Exactly one of ``vcenter`` (a registered name, with ``selection``) or ``source``
    (``file:PATH`` or ``nbd:URI``, with an optional backup ``name``)."""

    vcenter: str | None = None
    selection: VmSelection = field(default_factory=VmSelection)
    source: str | None = None
    name: str | None = None
    options: RunOptions = field(default_factory=RunOptions)


def parse_datastore_paths(specs: tuple[str, ...]) -> tuple[tuple[str, Path], ...]:
    """``DATASTORE=DIR`` texts -> pairs; raises :class:`UsageError` for any other text."""
    out = []
    for spec in specs:
        ds, sep, path = spec.partition("=")
        if not sep or not ds or not path:
            raise UsageError(f"--datastore-path {spec!r} is not DATASTORE=DIR")
        out.append((ds, Path(path)))
    return tuple(out)


def run_backup(
    ctx: Context,
    request: BackupRequest,
    track: Tracker = _quiet_tracker,
    notice: Notice = lambda line: None,
    cancel: Cancel | None = None,
) -> RunReport:
    """Back up what ``request`` names into the context's repository (as its writer).

    Per-VM and per-disk failures are in the report (``ok``, ``exit_code``); errors that stop
    the run before any VM is tried (no such vCenter, nothing selected) are raised. A
    ``cancel`` request stops the run at its next check: VMs in flight fail with
    :class:`Interrupted` (nothing recorded, snapshots removed), VMs not started are not."""
    if (request.source is None) == (request.vcenter is None):
        raise UsageError("give either --vcenter NAME with a VM selection, or --source")
    cancel = cancel or Cancel()
    track = cancel.guard(track)
    with ctx.open(lease="backup") as r:  # beside other backups, gc and prune
        if request.source is not None:
            vm = _standalone(r, request.source, request.name, request.options, track)
            return RunReport((vm,))
        assert request.vcenter is not None  # noqa: S101 - narrows the type; checked above
        return _vcenter_run(ctx, r, request, track, notice, cancel)


def _standalone(
    r: Repository, source: str, name: str | None, opts: RunOptions, track: Tracker
) -> VmReport:
    from vmaccel.plugin.engine.standalone import (
        back_up_source,
        default_name,
        open_source,
        parse_source,
    )

    kind, _ = parse_source(source)
    src = open_source(source)
    try:
        vm = name or default_name(source)
        with r.vm_lock(vm):  # one backup of a name at a time (RepositoryLocked otherwise)
            progress = track(vm, src.size)
            return back_up_source(
                r, src, vm, kind, vray=opts.skip_free, progress=progress,
                file_index=opts.file_index,
            )  # fmt: skip
    finally:
        src.close()


def _job_options(opts: RunOptions, cancel: Cancel, slots: DatastoreSlots) -> VmBackupOptions:
    from vmaccel.plugin.engine.transports import TransportConfig
    from vmaccel.plugin.engine.vmjob import VmBackupOptions

    return VmBackupOptions(
        transport=TransportConfig(opts.transport, dict(opts.datastore_paths), opts.nbd_command),
        quiesce=opts.quiesce,
        vray=opts.skip_free,
        rescan=opts.rescan,
        exclude_disks=frozenset(opts.exclude_disks),
        parallel=opts.parallel,
        file_index=opts.file_index,
        checkpoint=cancel.check,
        datastore_slots=slots.hold,
    )


def _resolve_selection(endpoint: Endpoint, wanted: VmSelection) -> Selection:
    """The selection with tags resolved to VM ids through vCenter's tagging API."""
    tagged: frozenset[str] = frozenset()
    if wanted.tags:
        from vmaccel.plugin.vcenter.tags import TagDirectory

        directory = TagDirectory(endpoint)
        ids = directory.tag_ids(wanted.tags)
        tagged = frozenset(directory.tagged_vms(list(ids.values())))
    sel = Selection(wanted.vms, wanted.folders, tagged, wanted.exclude_vms)
    if sel.empty and not wanted.tags:
        raise UsageError("select VMs with --vm, --folder or --tag")
    return sel


def _vcenter_run(
    ctx: Context,
    r: Repository,
    request: BackupRequest,
    track: Tracker,
    notice: Notice,
    cancel: Cancel,
) -> RunReport:
    from vmaccel.plugin.engine.vmjob import run_backups
    from vmaccel.plugin.vcenter.connection import VCenter
    from vmaccel.plugin.vcenter.inventory import list_vms

    name = request.vcenter
    assert name is not None  # noqa: S101 - narrows the type; run_backup checked it
    endpoint = Registry(ctx.config_dir).endpoint(name, ctx.env)
    sel = _resolve_selection(endpoint, request.selection)
    slots = DatastoreSlots(ctx.config_dir / "slots", name, checkpoint=cancel.check)
    opts = _job_options(request.options, cancel, slots)
    with VCenter(endpoint) as vc:
        # Full properties only for the VMs asked for; the rest of the inventory by name.
        inventory = list_vms(vc, sel.wants)
        missing = missing_names(inventory, sel)
        if missing:
            raise NotFound(f"no VM named {', '.join(map(repr, missing))} in vCenter {name}")
        chosen, skipped = select(inventory, sel)
        for vm_name, why in skipped:
            notice(f"skipping {vm_name}: {why}")
        if not chosen:
            raise NotFound("the selection matches no VM that can be backed up")
        return run_backups(vc, r, chosen, opts, track)

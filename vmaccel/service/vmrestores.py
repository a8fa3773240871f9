"""Restoring a backed-up VM into vSphere: as a new VM (or replacing the one of that name), one
disk into an existing VM, or in place (CBT rollback, :mod:`vmaccel.service.rollbacks`).

A new VM is created from the configuration saved with the backup, powered off; its disks are
written sparsely (only the image's data runs; holes stay holes on the new thin disks); CBT is
switched on afresh when the backed-up VM had it, so the next backup reads the new disks in
full. ``overwrite`` builds the new VM under a temporary name and removes the old VM only once
the new one is complete, then gives it the name. Any failure before that point deletes the
half-made VM and leaves the old one untouched.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmaccel.catalog.index import BackupRow, ImageRow
from vmaccel.catalog.repository import Repository
from vmaccel.plugin.registry import Registry
from vmaccel.service.backups import resolve_backup, resolve_disk
from vmaccel.service.context import Context
from vmaccel.vocabulary.disknames import stored_identity
from vmaccel.vocabulary.errors import RestoreError, UsageError, VmaccelError, VmNotFound
from vmaccel.vocabulary.units import format_bytes, format_duration

if TYPE_CHECKING:
    from vmaccel.guestfs.extent import Extent
    from vmaccel.plugin.engine.transports import TransportConfig
    from vmaccel.plugin.vcenter.connection import VCenter
    from vmaccel.plugin.vcenter.models import DiskRef
    from vmaccel.plugin.vcenter.vmcreate import Blueprint, CreatedVm

logger = logging.getLogger(__name__)

Tracker = Callable[[str, int], Callable[[int], None]]
Confirm = Callable[[str], bool]


def _quiet_tracker(label: str, total: int) -> Callable[[int], None]:
    return lambda n: None


@dataclass(frozen=True)
class VmRestoreRequest:
    """What ``restore vm`` was asked. ``networks``: (source name, target name) pairs;
    ``disks``: disk names (any form of :mod:`vmaccel.vocabulary.disknames`), empty for all;
    ``datastore_paths``: (datastore, local dir) pairs for the file transport."""

    backup: str
    vcenter: str
    name: str | None = None
    folder: str | None = None
    host: str | None = None
    cluster: str | None = None
    resource_pool: str | None = None
    datastore: str | None = None
    networks: tuple[tuple[str, str], ...] = ()
    disks: tuple[str, ...] = ()
    power_on: bool = False
    keep_identity: bool = False
    overwrite: bool = False
    into_vm: str | None = None
    in_place: bool = False
    transport: str = "auto"
    datastore_paths: tuple[tuple[str, Path], ...] = ()
    nbd_command: str | None = None

    def transport_config(self) -> TransportConfig:
        from vmaccel.plugin.engine.transports import TransportConfig

        return TransportConfig(self.transport, dict(self.datastore_paths), self.nbd_command)


@dataclass(frozen=True)
class DiskWrite:
    """One disk written. ``mode``: ``new`` (a new disk, data runs only), ``changed`` (the
    areas CBT reported changed since the backup) or ``full`` (the whole disk rewritten, with
    ``reason``). Bytes: ``size`` of the disk, ``bytes_written`` sent as data, ``bytes_zeroed``
    zeroed without sending data, ``planned`` both together."""

    disk: str
    target: str
    transport: str
    mode: str
    size: int
    bytes_written: int
    bytes_zeroed: int
    seconds: float
    reason: str = ""


@dataclass(frozen=True)
class VmRestoreReport:
    """What a restore did. ``action``: ``new``, ``replace``, ``into-vm`` or ``in-place``;
    ``vm``: the VM written (name, moref); ``replaced``: the moref of the VM removed."""

    backup_id: int
    source_vm: str
    action: str
    vm: str
    moref: str
    disks: tuple[DiskWrite, ...]
    seconds: float
    powered_on: bool = False
    cbt_reset: bool = False
    replaced: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def bytes_written(self) -> int:
        return sum(d.bytes_written for d in self.disks)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["bytes_written"] = self.bytes_written
        return doc

    def summary(self) -> list[str]:
        head = {
            "new": f"restored backup {self.backup_id} of {self.source_vm} as new VM {self.vm}",
            "replace": f"restored backup {self.backup_id} of {self.source_vm} as {self.vm}, "
            f"replacing the old VM ({self.replaced})",
            "into-vm": f"restored a disk of backup {self.backup_id} into VM {self.vm}",
            "in-place": f"rolled {self.vm} back to backup {self.backup_id}",
        }[self.action]
        lines = [f"{head} ({self.moref}) in {format_duration(self.seconds)}"]
        for d in self.disks:
            extra = f", {format_bytes(d.bytes_zeroed)} zeroed" if d.bytes_zeroed else ""
            lines.append(
                f"  {d.disk} -> {d.target} [{d.transport}, {d.mode}]: "
                f"{format_bytes(d.bytes_written)} written of {format_bytes(d.size)}{extra} "
                f"in {format_duration(d.seconds)}"
            )
            if d.reason:
                lines.append(f"    {d.disk}: written in full: {d.reason}")
        lines += [f"  {n}" for n in self.notes]
        return lines


def saved_key(image: ImageRow) -> int:
    """The device key the disk of ``image`` had in the saved configuration."""
    meta = image.meta
    ident = stored_identity(image.disk, meta.key, meta.label, meta.unit)
    key = (
        ident.key
        if ident.key is not None
        else (meta.baseline.disk_key if meta.baseline is not None else None)
    )
    if key is None:
        raise RestoreError(f"image {image.disk} does not say which disk of the VM it was")
    return key


def _chosen_images(r: Repository, row: BackupRow, disks: tuple[str, ...]) -> list[ImageRow]:
    if disks:
        return [resolve_disk(r, row, d) for d in disks]
    return list(r.images(row))


def restore_vm(
    ctx: Context,
    req: VmRestoreRequest,
    track: Tracker = _quiet_tracker,
    confirm: Confirm = lambda question: False,
) -> VmRestoreReport:
    """Carry out ``req`` (see the module docstring; ``in_place`` rolls back, asking
    ``confirm`` before powering the VM off). Raises :class:`UsageError` for contradictory
    options, :class:`RestoreError` when the target cannot be written as asked."""
    _check(req)
    from vmaccel.plugin.vcenter.connection import VCenter

    req.transport_config()  # refuses an unknown transport before anything else
    start = time.monotonic()
    endpoint = Registry(ctx.config_dir).endpoint(req.vcenter, ctx.env)
    with ctx.open() as r:
        row = resolve_backup(r, req.backup)
        if not row.meta.config_xml or not row.meta.api_version:
            raise RestoreError(
                f"backup {row.id} of {row.vm} holds no VM configuration (not a vCenter "
                "backup?); use `restore disk` instead"
            )
        images = _chosen_images(r, row, req.disks)
        with VCenter(endpoint) as vc:
            if req.in_place:
                from vmaccel.service.rollbacks import roll_back

                return roll_back(vc, r, row, images, req, track, confirm, start)
            if req.into_vm:
                return _into_vm(vc, r, row, images[0], req, track, start)
            return _new_vm(vc, r, row, images, req, track, start)


def _check(req: VmRestoreRequest) -> None:
    if req.in_place and (req.into_vm or req.name or req.overwrite):
        raise UsageError(
            "--in-place restores into the backed-up VM: no --name, --into-vm, --overwrite"
        )
    if req.into_vm and len(req.disks) != 1:
        raise UsageError("--into-vm takes exactly one --disk")
    if req.into_vm and (req.overwrite or req.name):
        raise UsageError("--into-vm adds a disk to an existing VM: no --name or --overwrite")
    if req.host and req.cluster:
        raise UsageError("give --host or --cluster, not both")
    for src, dst in req.networks:
        if not src or not dst:
            raise UsageError(f"--network {src}={dst} is not OLD=NEW")


def _new_vm(
    vc: VCenter,
    r: Repository,
    row: BackupRow,
    images: list[ImageRow],
    req: VmRestoreRequest,
    track: Tracker,
    start: float,
) -> VmRestoreReport:
    from vmaccel.plugin.vcenter import vmcreate

    name = req.name or row.vm
    old = vmcreate.find_vm(vc, name)
    if old is not None and not req.overwrite:
        raise RestoreError(
            f"a VM named {name!r} exists in vCenter {req.vcenter}; pass --name NEW, or "
            "--overwrite to replace it (removed only once the new VM is complete)"
        )
    if req.keep_identity and row.meta.instance_uuid:
        holder = vmcreate.find_by_instance_uuid(vc, row.meta.instance_uuid)
        if holder is not None and holder != old:
            raise RestoreError(
                f"VM {holder} still has the identity of {row.vm} (instance UUID "
                f"{row.meta.instance_uuid}): restore over it with --name of that VM and "
                "--overwrite, or without --keep-identity"
            )
    temp = f"{name}-vmaccel-{uuid.uuid4().hex[:8]}" if old is not None else name
    created, disks = _build(vc, r, row, images, req, temp, track)
    _take_over(vc, created, old, name, row, req)
    if req.power_on:
        vmcreate.power_on(vc, created.moref)
    return VmRestoreReport(
        row.id,
        row.vm,
        "replace" if old is not None else "new",
        name,
        created.moref,
        disks,
        time.monotonic() - start,
        powered_on=req.power_on,
        cbt_reset=created.source_cbt,
        replaced=old,
    )


def _take_over(
    vc: VCenter,
    created: CreatedVm,
    old: str | None,
    name: str,
    row: BackupRow,
    req: VmRestoreRequest,
) -> None:
    """The complete new VM takes over: CBT switched on afresh (when the backed-up VM had it);
    with ``old``, the old VM is removed, and only then the new one renamed to ``name`` (and
    given the saved identity with ``keep_identity``). A failure before the old VM is gone
    removes the new one."""
    from vmaccel.plugin.vcenter import vmcreate

    try:
        if created.source_cbt:
            vmcreate.reset_cbt(vc, created.moref)
        if old is not None:
            vmcreate.destroy(vc, old)
    except BaseException:
        _discard(vc, created.moref, name)
        raise
    if old is None:
        return
    vmcreate.rename(vc, created.moref, name)
    if req.keep_identity:
        assert row.meta.config_xml and row.meta.api_version  # noqa: S101 - restore_vm checked
        vmcreate.restore_identity(vc, created.moref, row.meta.config_xml, row.meta.api_version)


def _build(
    vc: VCenter,
    r: Repository,
    row: BackupRow,
    images: list[ImageRow],
    req: VmRestoreRequest,
    name: str,
    track: Tracker,
) -> tuple[CreatedVm, tuple[DiskWrite, ...]]:
    """The new VM ``name`` with every disk written (over NFC, or created then written with
    a ranged sink). On failure nothing of it is left registered."""
    from vmaccel.service.nfcimports import import_new_vm, uses_nfc

    if uses_nfc(req):
        return import_new_vm(vc, r, row, images, req, name, track)
    created = _create(vc, row, images, req, name)
    try:
        return created, _write_new_disks(vc, r, images, created, req, track)
    except BaseException:
        _discard(vc, created.moref, name)
        raise


def _create(
    vc: VCenter, row: BackupRow, images: list[ImageRow], req: VmRestoreRequest, name: str
) -> CreatedVm:
    from vmaccel.plugin.vcenter import vmcreate

    return vmcreate.create_vm(vc, blueprint(row, images, req, name))


def blueprint(
    row: BackupRow, images: list[ImageRow], req: VmRestoreRequest, name: str
) -> Blueprint:
    """VM ``name`` as ``req`` asks for it, from ``row``'s saved configuration, with a new disk
    per image."""
    from vmaccel.plugin.vcenter import vmcreate

    assert row.meta.config_xml and row.meta.api_version  # noqa: S101 - restore_vm checked
    return vmcreate.Blueprint(
        row.meta.config_xml,
        row.meta.api_version,
        name,
        vmcreate.Placement(req.datastore, req.folder, req.host, req.cluster, req.resource_pool),
        dict(req.networks),
        req.keep_identity,
        [vmcreate.NewDisk(saved_key(i)) for i in images],
    )


def _discard(vc: VCenter, moref: str, name: str) -> None:
    """Delete the half-made VM; a failure to do so is logged (the first error matters)."""
    from vmaccel.plugin.vcenter import vmcreate

    try:
        vmcreate.destroy(vc, moref)
    except VmaccelError as exc:
        logger.error("could not remove the half-made VM %s (%s): %s", moref, name, exc)


def _write_new_disks(
    vc: VCenter,
    r: Repository,
    images: list[ImageRow],
    created: CreatedVm,
    req: VmRestoreRequest,
    track: Tracker,
) -> tuple[DiskWrite, ...]:
    out = []
    for image, (_, disk) in zip(images, created.disks, strict=True):
        out.append(write_disk(vc, r, image, created.moref, disk, req, track))
    return tuple(out)


def write_disk(
    vc: VCenter,
    r: Repository,
    image: ImageRow,
    moref: str,
    disk: DiskRef,
    req: VmRestoreRequest,
    track: Tracker,
    areas: Sequence[Extent] | None = None,
    reason: str = "",
) -> DiskWrite:
    """Write ``image`` to ``disk`` of VM ``moref``. Not in place: a new disk, data runs
    only. In place: the image within ``areas`` (data written, holes zeroed), or the whole
    disk when ``areas`` is None (``reason`` says why)."""
    from vmaccel.plugin.sink.choose import open_sink
    from vmaccel.plugin.sink.copy import fresh_plan, planned_bytes, rewrite_plan, write_pieces

    if image.size > disk.capacity:
        raise RestoreError(f"{image.disk} ({image.size} bytes) does not fit {disk.label}")
    kind, sink = open_sink(req.transport_config(), vc, moref, disk, req.in_place)
    try:
        with r.open_image(image) as reader:
            if not req.in_place:
                plan, mode = fresh_plan(reader.extents()), "new"
            else:
                plan = rewrite_plan(reader.extents(), image.size, areas)
                mode = "full" if areas is None else "changed"
            advance = track(f"{image.disk} -> {disk.file_name}", planned_bytes(plan))
            stats = write_pieces(reader, sink, plan, advance)
    finally:
        sink.close()
    return DiskWrite(
        image.disk, disk.file_name, kind, mode, image.size,
        stats.bytes_written, stats.bytes_zeroed, stats.seconds, reason,
    )  # fmt: skip


def _into_vm(
    vc: VCenter,
    r: Repository,
    row: BackupRow,
    image: ImageRow,
    req: VmRestoreRequest,
    track: Tracker,
    start: float,
) -> VmRestoreReport:
    from vmaccel.plugin.vcenter import vmcreate

    assert req.into_vm is not None  # noqa: S101 - the caller checked
    moref = vmcreate.find_vm(vc, req.into_vm)
    if moref is None:
        raise VmNotFound(f"no VM named {req.into_vm!r} in vCenter {req.vcenter}")
    datastore = req.datastore or _home_datastore(vc, moref)
    disk = vmcreate.add_disk(vc, moref, image.size, datastore)
    try:
        written = write_disk(vc, r, image, moref, disk, req, track)
    except BaseException:
        try:
            vmcreate.remove_disk(vc, moref, disk.key)
        except VmaccelError as exc:
            logger.error("could not remove the half-written disk %s: %s", disk.file_name, exc)
        raise
    return VmRestoreReport(
        row.id, row.vm, "into-vm", req.into_vm, moref, (written,), time.monotonic() - start
    )


def _home_datastore(vc: VCenter, moref: str) -> str:
    from vmaccel.plugin.vcenter.vmcreate import home_datastore

    return home_datastore(vc, moref)

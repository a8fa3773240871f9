"""One VM's backup run (DESIGN invariants 3-7), and several VMs in parallel.

Per VM: remove leftover vmaccel snapshots; enable CBT when it is off and the VM has no
snapshots; snapshot (quiesced, else crash-consistent); per disk decide full or incremental,
query CBT, read through the transport and derive the image; commit images, changeIds and the
saved configuration together; remove the snapshot in ``finally``. A failing VM is reported and
the others go on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import Any

from vmaccel.catalog.backup import BackupWriter
from vmaccel.catalog.index import BackupRow, ImageRow
from vmaccel.catalog.repository import Repository
from vmaccel.guestfs.extent import Extent
from vmaccel.plugin.engine.baseline import Baseline, decide
from vmaccel.plugin.engine.copy import Progress
from vmaccel.plugin.engine.disk import DiskJob, back_up_disk, skipped_free
from vmaccel.plugin.engine.plan import FULL, INCREMENTAL, RESCAN
from vmaccel.plugin.engine.report import DiskReport, RunReport, VmReport
from vmaccel.plugin.engine.selection import excluded_disks
from vmaccel.plugin.engine.transports import TransportConfig, open_disk
from vmaccel.plugin.engine.verdict import verdict_step
from vmaccel.plugin.vcenter import cbt, snapshots
from vmaccel.plugin.vcenter.connection import VCenter
from vmaccel.plugin.vcenter.datastore import datastore_types
from vmaccel.plugin.vcenter.models import BackupSnapshot, DiskRef, VmRef
from vmaccel.vocabulary.disknames import META_KEY, META_LABEL, META_UNIT
from vmaccel.vocabulary.errors import ChangeTrackingError, SourceChanged, VmaccelError

logger = logging.getLogger(__name__)
Tracker = Callable[[str, int], Progress]


@dataclass(frozen=True)
class VmBackupOptions:
    transport: TransportConfig = field(default_factory=TransportConfig)
    quiesce: bool = True
    vray: bool = True
    rescan: bool = False
    # "VM:DISK" with DISK in any form of vmaccel.vocabulary.disknames (name, key, label, unit)
    exclude_disks: frozenset[str] = frozenset()
    parallel: int = 1
    file_index: bool = True
    # Called before each VM starts; raises (e.g. Interrupted) to stop the run there. Disks
    # in flight stop through their progress callback, which the caller may make raise too.
    checkpoint: Callable[[], None] = field(default=lambda: None, compare=False)
    # Holds the snapshot slots of a VM's datastores while it is backed up: the caller's
    # limit (global across runs); by default at most 4 per datastore within this run.
    datastore_slots: Callable[[Sequence[str]], AbstractContextManager[object]] | None = field(
        default=None, compare=False
    )


def index_backup(repo: Repository, backup: BackupRow) -> list[str]:
    """The file catalog of ``backup``: :func:`vmaccel.plugin.engine.fileindex.index_backup`,
    imported on first use (its guest file-system readers take ~0.1 s to import)."""
    from vmaccel.plugin.engine.fileindex import index_backup as index

    return index(repo, backup)


def image_meta(disk: DiskRef, baseline: Baseline, transport: str) -> dict[str, Any]:
    """What an image records about its vCenter disk: the invariant-3 baseline, the names a
    user may give the disk later (label, key, unit: :mod:`vmaccel.vocabulary.disknames`),
    the disk file and how it was read."""
    meta: dict[str, Any] = {
        "baseline": baseline.to_json(),
        META_LABEL: disk.label,
        META_KEY: disk.key,
        "file_name": disk.file_name,
        "transport": transport,
    }
    if disk.unit is not None:
        meta[META_UNIT] = disk.unit
    return meta


@dataclass(frozen=True)
class _Decision:
    """How one disk is read: ``changed`` extents (None: every allocated block), ``audit``:
    CBT's announced extents that a rescan checks."""

    mode: str
    reason: str
    changed: Sequence[Extent] | None = None
    audit: Sequence[Extent] | None = None


class VmRun:
    """Backs up one VM. Thread safe across VMs: each run has its own backup writer."""

    def __init__(
        self,
        vc: VCenter,
        repo: Repository,
        opts: VmBackupOptions,
        track: Tracker,
        ds_types: dict[str, str],
    ) -> None:
        self.vc, self.repo, self.opts, self.track, self.ds_types = vc, repo, opts, track, ds_types

    def run(self, vm: VmRef) -> VmReport:
        started, warnings = time.monotonic(), []
        try:
            removed = snapshots.remove_leftovers(self.vc, vm)
            warnings += [f"removed leftover snapshot {name}" for name in removed]
            warnings += self._ensure_cbt(vm)
            snap = snapshots.create(self.vc, vm, self.opts.quiesce)
        except VmaccelError as exc:
            return VmReport(
                vm.name,
                None,
                (),
                time.monotonic() - started,
                error=str(exc),
                warnings=tuple(warnings),
                exit_code=exc.exit_code,
            )
        consistency = "application-consistent" if snap.quiesced else "crash-consistent"
        if self.opts.quiesce and not snap.quiesced and vm.power_state == "poweredOn":
            warnings.append("quiescing failed: this restore point is crash-consistent")
        try:
            backup_id, disks, error, code = self._back_up(vm, snap, warnings)
        finally:
            try:
                snapshots.remove(self.vc, snap.snapshot.moref, f"removing snapshot of {vm.name}")
            except VmaccelError as exc:
                warnings.append(f"{exc}; the next run removes the leftover snapshot")
        catalog_started = time.monotonic()
        if backup_id is not None and self.opts.file_index:
            # After the snapshot is gone: the catalog reads the stored image, not the VM.
            warnings.extend(index_backup(self.repo, self.repo.backup(backup_id)))
        if backup_id is not None:
            warnings.extend(verdict_step(self.repo, backup_id))
        return VmReport(
            vm.name,
            backup_id,
            disks,
            time.monotonic() - started,
            consistency,
            error,
            tuple(warnings),
            catalog_seconds=time.monotonic() - catalog_started,
            exit_code=code,
        )

    def _ensure_cbt(self, vm: VmRef) -> list[str]:
        if vm.cbt_enabled:
            return []
        if any(not snapshots.is_ours(s) for s in vm.snapshots):
            return [
                "CBT is off and the VM has snapshots: disks are read whole (remove the "
                "snapshots so CBT can be enabled safely)"
            ]
        cbt.enable(self.vc, vm.moref, vm.name)
        return ["CBT was off and has been enabled; this run reads disks whole"]

    def _back_up(
        self, vm: VmRef, snap: BackupSnapshot, warnings: list[str]
    ) -> tuple[int | None, tuple[DiskReport, ...], str | None, int]:
        """(backup id, disk reports, error, its exit code). A disk that fails is reported
        failed and aborts the backup: nothing of this run is recorded."""
        parents = self.repo.latest_images(
            vm.name, vm.instance_uuid, [d.name for d in snap.disks]
        )
        meta = {
            "instance_uuid": vm.instance_uuid,
            "moref": vm.moref,
            "folder": vm.folder,
            "power_state": vm.power_state,
            "snapshot": snap.snapshot.name,
        }
        reports: list[DiskReport] = []
        try:
            excluded, notes = excluded_disks(self.opts.exclude_disks, vm.name, snap.disks)
            warnings.extend(notes)
            with self.repo.begin_backup(vm.name, meta) as bw:
                for disk in snap.disks:
                    skip = self._skip_reason(disk, excluded)
                    if skip:
                        warnings.append(f"{disk.label} skipped: {skip}")
                        continue
                    try:
                        reports.append(self._disk(bw, vm, snap, disk, parents.get(disk.name)))
                    except VmaccelError as exc:
                        reports.append(_failed(disk, exc))
                        raise
                row = bw.commit(
                    {
                        "consistency": "application-consistent"
                        if snap.quiesced
                        else "crash-consistent",
                        "config_xml": snap.config_xml,
                        "api_version": snap.api_version,
                    }
                )
        except VmaccelError as exc:
            failed = [d.disk for d in reports if not d.ok]
            where = f"{failed[0]}: " if failed else ""
            return None, tuple(reports), f"{where}{exc}; the backup was not recorded", exc.exit_code
        return row.id, tuple(reports), None, 0

    def _skip_reason(self, disk: DiskRef, excluded: frozenset[str]) -> str | None:
        if disk.name in excluded:
            return "excluded by --exclude-disk"
        if disk.independent:
            return f"independent disk ({disk.disk_mode}): snapshots do not freeze it"
        if disk.physical_rdm:
            return "physical-mode RDM: not captured by snapshots"
        return None

    def _disk(
        self,
        bw: BackupWriter,
        vm: VmRef,
        snap: BackupSnapshot,
        disk: DiskRef,
        parent: ImageRow | None,
    ) -> DiskReport:
        current = Baseline(vm.instance_uuid, disk.key, disk.uuid, disk.capacity, disk.change_id)
        how = self._decide(vm, snap, disk, current, parent)
        transport, source = open_disk(
            self.opts.transport, self.vc, vm, snap.snapshot, disk, self.ds_types
        )
        try:
            if source.size != disk.capacity:
                raise SourceChanged(
                    f"{disk.label}: the transport sees {source.size} bytes, "
                    f"the disk has {disk.capacity}"
                )
            job = DiskJob(
                disk.name,
                source,
                parent,
                how.mode,
                how.reason,
                how.changed,
                disk.change_id,
                self.opts.vray,
                image_meta(disk, current, transport),
                how.audit,
                quiesced=snap.quiesced,
            )
            return back_up_disk(bw, job, self.track(f"{vm.name} {disk.label}", disk.capacity))
        finally:
            source.close()

    def _decide(
        self,
        vm: VmRef,
        snap: BackupSnapshot,
        disk: DiskRef,
        current: Baseline,
        parent: ImageRow | None,
    ) -> _Decision:
        """Full, incremental or rescan for one disk (DESIGN invariant 3), with CBT's areas."""
        base = parent.meta.baseline if parent else None
        mode, reason = decide(current, base)
        if mode != FULL and not self.opts.vray and parent is not None and skipped_free(parent):
            # Free blocks are holes in the parent and CBT will not name them: only a full
            # read gives the byte-for-byte image --no-skip-free promises.
            mode, reason = FULL, "the earlier image left free blocks out (--no-skip-free)"
        changed = None
        if base is not None and base.change_id and (mode == INCREMENTAL or self.opts.rescan):
            try:
                changed = cbt.changed_areas(
                    self.vc, vm.moref, snap.snapshot.moref, disk.key, disk.capacity, base.change_id
                )
            except ChangeTrackingError as exc:
                mode, reason, changed = FULL, f"CBT query failed ({exc})", None
        if self.opts.rescan and parent is not None and mode != FULL:
            return _Decision(RESCAN, "forced rescan with CBT audit", None, changed)
        return _Decision(mode, reason, changed)


def _failed(disk: DiskRef, exc: VmaccelError) -> DiskReport:
    return DiskReport(disk.name, "failed", str(exc), disk.capacity, error=str(exc))


def run_backups(
    vc: VCenter, repo: Repository, vms: Sequence[VmRef], opts: VmBackupOptions, track: Tracker
) -> RunReport:
    """Back up ``vms`` (``opts.parallel`` at a time, each holding its datastores' snapshot
    slots, see ``VmBackupOptions.datastore_slots``). Every VM is reported, failed or not."""
    runner = VmRun(vc, repo, opts, track, datastore_types(vc))
    slots = opts.datastore_slots or _run_slots(PER_DATASTORE_IN_RUN)

    def one(vm: VmRef) -> VmReport:
        try:
            opts.checkpoint()
            with repo.vm_lock(vm.name), slots(sorted({d.datastore for d in vm.disks})):
                return runner.run(vm)  # one backup of a VM at a time, then its slots
        except VmaccelError as exc:  # stopped while waiting, or failed outside its report
            return VmReport(vm.name, None, (), 0.0, error=str(exc), exit_code=exc.exit_code)

    with ThreadPoolExecutor(max(1, opts.parallel), "vmaccel-vm") as pool:
        return RunReport(tuple(pool.map(one, vms)))


PER_DATASTORE_IN_RUN = 4


def _run_slots(limit: int) -> Callable[[Sequence[str]], AbstractContextManager[object]]:
    """At most ``limit`` VMs of this run per datastore at once (semaphores, this run only)."""
    sems: dict[str, threading.Semaphore] = {}
    lock = threading.Lock()

    def hold(datastores: Sequence[str]) -> AbstractContextManager[object]:
        stack = ExitStack()
        for ds in sorted(datastores):
            with lock:
                sem = sems.setdefault(ds, threading.Semaphore(limit))
            stack.enter_context(sem)
        return stack

    return hold

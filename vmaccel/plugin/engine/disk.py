"""One disk of one backup: look inside it (V-Ray), plan, copy, and record its image."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from vmaccel.catalog.backup import BackupWriter
from vmaccel.catalog.blockmap import MapRoot
from vmaccel.catalog.index import ImageRow
from vmaccel.guestfs.allocation import AllocationMap, build_allocation_map
from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.extent import Extent
from vmaccel.plugin.engine.audit import unannounced
from vmaccel.plugin.engine.copy import Progress, copy_disk
from vmaccel.plugin.engine.plan import FULL, plan_disk
from vmaccel.plugin.engine.report import DiskReport
from vmaccel.plugin.transport.source import DiskSource, SourceStream

logger = logging.getLogger(__name__)


def skipped_free(image: ImageRow) -> bool:
    """Whether ``image`` left the guest's free blocks out (holes where the disk may hold data).
    Images from before the ``skip_free`` flag tell by their allocation summary."""
    return image.meta.skips_free


@dataclass(frozen=True)
class DiskJob:
    """What to back up for one disk. ``changed`` None means read every allocated block."""

    disk: str
    source: DiskSource
    parent: ImageRow | None
    mode: str
    reason: str
    changed: Sequence[Extent] | None = None
    change_id: str | None = None
    vray: bool = True
    meta: dict[str, Any] | None = None
    audit: Sequence[Extent] | None = None  # CBT's announced extents, checked by a rescan
    quiesced: bool = False  # the snapshot flushed the guest's filesystems (VSS)


def allocation_of(
    source: DiskSource, quiesced: bool = False
) -> tuple[AllocationMap | None, list[str]]:
    """The guest filesystems' allocation map, or None (and why) when it cannot be read.
    ``quiesced``: the source is a snapshot taken with the guest's filesystems flushed."""
    try:
        stream = cast(BinaryIO, SourceStream(source))
        amap = build_allocation_map(stream, source.size, quiesced=quiesced)
    except GuestFsError as exc:
        return None, [f"free-block skipping off: {exc}"]
    notes = []
    for r in amap.volumes:
        if not r.whole_reason:
            continue
        if r.fstype is None:  # unformatted space, swap, unknown filesystems: read as is
            logger.info("%s taken whole: %s", r.volume.name, r.whole_reason)
        else:
            notes.append(f"{r.volume.name}: {r.fstype} taken whole ({r.whole_reason})")
    return amap, notes


def allocation_summary(amap: AllocationMap | None) -> list[dict[str, Any]]:
    if amap is None:
        return []
    return [
        {
            "volume": r.volume.name,
            "fstype": r.fstype,
            "state": str(r.state),
            "used_bytes": r.used_bytes,
            "whole_reason": r.whole_reason,
        }
        for r in amap.volumes
    ]


def back_up_disk(bw: BackupWriter, job: DiskJob, progress: Progress | None = None) -> DiskReport:
    """Write one image into ``bw``. Raises on transport errors (the caller aborts the backup)."""
    started = time.monotonic()
    src, bs = job.source, bw.repo.config.block_size
    amap, warnings = allocation_of(src, job.quiesced) if job.vray else (None, [])
    plan = plan_disk(
        src.size,
        bs,
        src.data_extents(),
        job.changed,
        amap.used if amap is not None else None,
        job.mode if job.parent is not None else FULL,
        job.reason,
    )
    writer = bw.image_writer(job.disk, src.size, job.parent if plan.mode != FULL else None)
    try:
        bytes_read = copy_disk(src, writer, plan, progress)
    except BaseException:
        writer.abort()
        raise
    meta = {
        **(job.meta or {}),
        "source": src.name,
        "allocation": allocation_summary(amap),
        "skip_free": amap is not None,
        "mode": plan.mode,
        "reason": plan.reason,
    }
    pending = bw.finish_image(
        job.disk, writer, job.parent if plan.mode != FULL else None, job.change_id, meta
    )
    if job.audit is not None and job.parent is not None and plan.mode != FULL:
        warnings.extend(_audit(bw, job, plan.read, pending.root, pending.depth))
    stats = writer.stats
    return DiskReport(
        disk=job.disk,
        mode=plan.mode,
        reason=plan.reason,
        size=src.size,
        bytes_read=bytes_read,
        new_bytes=stats.new_bytes,
        stored_bytes=stats.stored_bytes,
        hole_bytes=sum(h.length for h in plan.holes),
        duration=time.monotonic() - started,
        change_id=job.change_id,
        warnings=tuple(warnings),
    )


def _audit(
    bw: BackupWriter, job: DiskJob, read: Sequence[Extent], root: bytes | None, depth: int
) -> list[str]:
    assert job.parent is not None and job.audit is not None  # noqa: S101 - narrows the type for mypy; the caller checked both
    parent = bw.repo.map_root(job.parent)
    bs = bw.repo.config.block_size
    new = MapRoot(root, depth, parent.fanout, -(-job.source.size // bs))
    if new.blocks != parent.blocks:
        return ["CBT audit skipped: the disk size changed"]
    missed = unannounced(bw.blockmap, parent, new, job.audit, read, bs)
    if not missed:
        return []
    total = sum(e.length for e in missed)
    listed = ", ".join(f"{e.offset}+{e.length}" for e in missed[:20])
    more = f" and {len(missed) - 20} more" if len(missed) > 20 else ""
    return [f"CBT audit: {total} bytes changed that CBT did not report: {listed}{more}"]

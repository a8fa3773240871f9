"""Backups of a disk with no vCenter: a raw image, a block device, or an NBD export.

Without CBT every run reads each allocated block (free-block skipping still applies) and
stores only content not stored before: the first run is a full, later runs are hash-compared
incrementals whose image derives from the previous one. Useful for KVM raw images.
"""

from __future__ import annotations

import time
from pathlib import Path

from vmaccel.catalog.repository import Repository
from vmaccel.plugin.engine.copy import Progress
from vmaccel.plugin.engine.disk import DiskJob, back_up_disk
from vmaccel.plugin.engine.fileindex import index_backup
from vmaccel.plugin.engine.plan import FULL, INCREMENTAL
from vmaccel.plugin.engine.report import VmReport
from vmaccel.plugin.engine.verdict import verdict_step
from vmaccel.plugin.transport.file import FileSource
from vmaccel.plugin.transport.nbd import NbdSource
from vmaccel.plugin.transport.source import DiskSource
from vmaccel.vocabulary.disknames import STANDALONE
from vmaccel.vocabulary.errors import UsageError, VmaccelError

STANDALONE_DISK = STANDALONE  # the one disk of a source backup (vocabulary.disknames)


def open_source(spec: str) -> DiskSource:
    """``file:PATH`` or ``nbd:URI`` (``nbd+unix:///?socket=...``, ``nbd://host/export``)."""
    kind, rest = parse_source(spec)
    if kind == "file":
        return FileSource(Path(rest))
    return NbdSource(uri=rest)


def parse_source(spec: str) -> tuple[str, str]:
    """Split a source spec into (transport, location); raises UsageError when malformed."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise UsageError(f"source {spec!r} is not file:PATH or nbd:URI")
    if kind in ("file", "nbd"):
        return kind, rest
    raise UsageError(f"unknown source kind {kind!r}; use file:PATH or nbd:URI")


def default_name(spec: str) -> str:
    _, _, rest = spec.partition(":")
    return Path(rest).stem if spec.startswith("file:") else rest


def back_up_source(
    repo: Repository,
    source: DiskSource,
    vm: str,
    transport: str,
    vray: bool = True,
    progress: Progress | None = None,
    file_index: bool = True,
) -> VmReport:
    """Back up ``source`` as disk ``disk0`` of ``vm``. Failures abort the backup and are
    reported (nothing half-done becomes visible)."""
    started = time.monotonic()
    parent = repo.latest_images(vm, disks=[STANDALONE_DISK]).get(STANDALONE_DISK)
    mode, reason = (
        (INCREMENTAL, "no CBT: allocated blocks read and compared by content")
        if parent is not None
        else (FULL, "first backup of this source")
    )
    job = DiskJob(
        STANDALONE_DISK, source, parent, mode, reason, vray=vray, meta={"transport": transport}
    )
    try:
        with repo.begin_backup(vm, {"source": source.name, "kind": "standalone"}) as bw:
            disk = back_up_disk(bw, job, progress)
            row = bw.commit()
    except VmaccelError as exc:
        elapsed = time.monotonic() - started
        return VmReport(vm, None, (), elapsed, error=str(exc), exit_code=exc.exit_code)
    catalog_started = time.monotonic()
    warnings = index_backup(repo, row) if file_index else []
    warnings += verdict_step(repo, row.id)  # after the catalog: the file signals need it
    return VmReport(
        vm,
        row.id,
        (disk,),
        time.monotonic() - started,
        warnings=tuple(warnings),
        catalog_seconds=time.monotonic() - catalog_started,
    )

"""NTFS allocation: the clusters $Bitmap (MFT record 6) marks in use, once it can be trusted.

$Bitmap's unnamed $DATA attribute holds one bit per cluster (set = in use). It is trusted
only when it is
- current: $Volume (record 3) is not marked dirty (VOLUME_IS_DIRTY 0x0001 in its
  VOLUME_INFORMATION), and, unless the snapshot was quiesced, the $LogFile restart area is
  clean (guestfs.ntfslog) and the volume is not hibernated (guestfs.ntfshiber). A VSS-quiesced
  snapshot is flushed: its $Bitmap is current although the open log is not "clean";
- intact: system records 0-15 pass their update sequence checks, $MFTMirr repeats $MFT, the
  backup boot sector repeats the boot sector, and $Bitmap's sizes cover every cluster;
- consistent: every cluster of the boot sector and of the system files (records 0-15, named
  in errors) is marked in use, and so is every allocated run of every other MFT record in
  use (guestfs.ntfswalk). $Bitmap has no checksum: a cleared bit under a file's data is
  visible only against the run lists, so the walk is O(records in use) on every incremental
  (about 4 us per record, plus one read of the MFT's in-use parts) - the price of never
  skipping live data.
A volume that is not current is taken whole (DIRTY, with the reason); a failed integrity or
consistency check raises `GuestFsError` naming the check. Sizes are bytes unless a name says
clusters or records.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.extent import Extent, from_bitmap, merge
from vmaccel.guestfs.ntfscheck import (
    check_backup_boot_sector,
    check_marked_used,
    check_mirror,
    required_extents,
    system_name,
)
from vmaccel.guestfs.ntfshiber import hibernation_signature
from vmaccel.guestfs.ntfslog import LogState, log_state
from vmaccel.guestfs.ntfsrecord import (
    ATTR_DATA,
    RECORD_IN_USE,
    SYSTEM_FILES,
    Attribute,
    Geometry,
    Run,
    coalesce,
    find_attribute,
    mft_data,
    read_geometry,
    read_record,
    read_records,
    record_flags,
    unprotect,
    volume_flags,
)
from vmaccel.guestfs.ntfswalk import check_all_records
from vmaccel.guestfs.usage import FsState, FsUsage, whole
from vmaccel.guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

VOLUME_IS_DIRTY = 0x0001
RECORD_MFT, RECORD_MFTMIRR, RECORD_LOGFILE, RECORD_VOLUME = 0, 1, 2, 3
RECORD_ROOT, RECORD_BITMAP = 5, 6
SYSTEM_RECORDS = 16
_READ_CHUNK = 4 << 20


def ntfs_usage(view: VolumeView, *, quiesced: bool = False) -> FsUsage:
    """Used space of the NTFS volume behind `view`, in volume byte offsets.

    `quiesced`: the snapshot was taken with the guest's filesystems flushed (VSS), so an open
    $LogFile or a hibernation file does not make $Bitmap stale. Reads the boot sector and its
    backup, MFT records 0-15 (one read), $MFTMirr, the head of $LogFile (64 KiB), the root
    index (for hiberfil.sys), then $Bitmap and the parts of $MFT holding records in use, in
    reads of at most 4 MiB. The bytes after the last cluster (where the backup boot sector
    lives) count as used. Returns the volume whole as DIRTY, with the reason, when $Bitmap
    may not be current; raises `GuestFsError` when an integrity or consistency check fails
    (see the module docstring).
    """
    size = view.volume.size
    geo = read_geometry(view)
    mft = mft_data(view, geo, read_record(view, geo, geo.mft_lcn * geo.cluster_size, RECORD_MFT))
    mft_runs = list(mft.runs)
    system = read_system_records(view, geo, mft_runs)
    stale, note = _staleness(view, geo, mft_runs, system, quiesced)
    if stale:
        return whole("ntfs", FsState.DIRTY, size, stale)
    check_backup_boot_sector(view, geo)
    check_mirror(view, geo, mft_runs, system[RECORD_MFTMIRR])
    used = bitmap_extents(view, geo, find_attribute(system[RECORD_BITMAP], ATTR_DATA))
    check_marked_used(geo, required_extents(geo, system), used)
    check_all_records(view, geo, mft, system[RECORD_MFT], used)
    end = geo.cluster_count * geo.cluster_size
    return FsUsage("ntfs", FsState.CLEAN, merge([*used, Extent(end, size - end)]), note=note)


def read_system_records(view: VolumeView, geo: Geometry, mft_runs: list[Run]) -> dict[int, bytes]:
    """MFT records 0-15 that are in use, fixups applied, read in one read per contiguous span.

    Raises `GuestFsError` when one of the named system files (records 0-11) is missing, not
    in use or torn; reserved records 12-15 are skipped when they hold no record."""
    out: dict[int, bytes] = {}
    for number, raw in enumerate(read_records(view, geo, mft_runs, 0, SYSTEM_RECORDS)):
        if number >= len(SYSTEM_FILES) and raw[:4] != b"FILE":
            continue
        rec = bytes(unprotect(raw, b"FILE", f"MFT record {number} ({system_name(number)})"))
        if record_flags(rec) & RECORD_IN_USE:
            out[number] = rec
        elif number < len(SYSTEM_FILES):
            raise GuestFsError(f"ntfs: MFT record {number} ({system_name(number)}) is not in use")
    return out


def _staleness(
    view: VolumeView, geo: Geometry, mft_runs: list[Run], system: dict[int, bytes], quiesced: bool
) -> tuple[str | None, str | None]:
    """(why $Bitmap may not be current, or None; a note when quiescing overrode a sign)."""
    if volume_flags(system[RECORD_VOLUME]) & VOLUME_IS_DIRTY:
        return "ntfs volume is marked dirty ($Volume flags): Windows wants chkdsk", None
    log = log_state(view, geo, find_attribute(system[RECORD_LOGFILE], ATTR_DATA))
    if quiesced:
        if log.clean:
            return None, None
        return None, f"{log.describe()}; trusted because the snapshot was quiesced"
    if not log.clean:
        return _log_reason(log), None
    signature = hibernation_signature(view, geo, mft_runs, system[RECORD_ROOT])
    if signature is not None:
        return (
            f"ntfs volume is hibernated (hiberfil.sys header {signature.decode('latin-1')!r}, "
            "e.g. Windows Fast Startup) and the snapshot was not quiesced: $Bitmap may lag "
            "the memory image"
        ), None
    return None, None


def _log_reason(log: LogState) -> str:
    if log.area is not None and log.area.closed:
        return (
            "ntfs $LogFile is version 2.0 and the snapshot was not quiesced: Windows 8+ may "
            f"keep the volume's metadata cached (Fast Startup), so $Bitmap may lag it "
            f"({log.describe()})"
        )
    return (
        "ntfs $LogFile is not clean and the snapshot was not quiesced: the guest was running "
        f"or crashed, so $Bitmap may lag the log ({log.describe()})"
    )


def bitmap_extents(view: VolumeView, geo: Geometry, data: Attribute) -> list[Extent]:
    """Byte extents of the clusters $Bitmap (its unnamed $DATA `data`) marks in use.

    Raises `GuestFsError` unless its data and initialized sizes cover every cluster's bit and
    its runs map them without sparse runs (a hole would read as "all free")."""
    need = (geo.cluster_count + 7) // 8
    if data.resident:
        raise GuestFsError("ntfs: $Bitmap's data is resident")
    if data.data_size < need or data.initialized_size < need:
        raise GuestFsError(
            f"ntfs: $Bitmap holds {data.data_size} bytes ({data.initialized_size} initialized), "
            f"fewer than {need} for {geo.cluster_count} clusters"
        )
    used: list[Extent] = []
    for first_bit, chunk in _read_runs(view, geo, list(data.runs), need):
        count = max(0, min(len(chunk) * 8, geo.cluster_count - first_bit))
        used.extend(from_bitmap(chunk, geo.cluster_size, first_bit * geo.cluster_size, count))
    return list(merge(used))


def _read_runs(
    view: VolumeView, geo: Geometry, runs: list[Run], length: int
) -> Iterator[tuple[int, bytes]]:
    """Yield (first bit index, bytes) chunks of the first `length` bytes of $Bitmap, one
    read of at most 4 MiB per piece of physically contiguous runs."""
    pos = 0
    for lcn, start, size in coalesce(runs, geo.cluster_size):
        if lcn is None:
            raise GuestFsError("ntfs: $Bitmap has a sparse run")
        run_bytes = min(size, length - start)
        for done in range(0, run_bytes, _READ_CHUNK):
            n = min(_READ_CHUNK, run_bytes - done)
            yield (start + done) * 8, view.pread(lcn * geo.cluster_size + done, n)
        pos = start + run_bytes
        if pos >= length:
            return
    raise GuestFsError(f"ntfs: $Bitmap run list covers {pos} of {length} bytes")

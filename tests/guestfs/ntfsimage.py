"""Small real NTFS volumes (mkntfs + ntfs-3g) and precise damage done to them.

Metadata is located with guestfs.ntfsrecord's primitives; the tests that depend on a layout
fact have ntfs-3g judge the same bytes (it refuses the logs we call unclean, the hibernated
volume and the $MFTMirr mismatch, and reads the split $MFT). Restart pages are written as
Windows writes them: one log client "NTFS", version 1.1 (or 2.0, Windows 8+ in use).
"""

from __future__ import annotations

import io
import struct
import subprocess
from pathlib import Path

from tests.guestfs.imaging import run
from vmaccel.guestfs.ntfsrecord import (
    ATTR_DATA,
    FIXUP_STRIDE,
    Attribute,
    Geometry,
    attributes,
    data_runs,
    find_attribute,
    read_geometry,
    read_mft_record,
    read_record,
    record_offsets,
)
from vmaccel.guestfs.volume import VolumeView, whole_disk


def mkfs_populated(img: Path, size: int, files: dict[str, bytes], mnt: Path) -> None:
    """A bare NTFS volume of `size` bytes holding `files` (path -> content), via ntfs-3g."""
    with open(img, "wb") as f:
        f.truncate(size)
    run("mkntfs", "-q", "-F", "-Q", img)
    mnt.mkdir(exist_ok=True)
    run("ntfs-3g", img, mnt)
    try:
        for rel, data in files.items():
            (mnt / rel).parent.mkdir(parents=True, exist_ok=True)
            (mnt / rel).write_bytes(data)
    finally:
        run("umount", mnt)


def mounts_rw(img: Path, mnt: Path) -> str | None:
    """None if ntfs-3g mounts `img` read-write (then unmounts it), else its complaint.

    `norecover` keeps ntfs-3g from resetting an unclean $LogFile (its default); a volume it
    will not write to is then mounted read-only, with the reason on stderr."""
    mnt.mkdir(exist_ok=True)
    proc = subprocess.run(
        ["ntfs-3g", "-o", "norecover", str(img), str(mnt)], capture_output=True, check=False
    )
    if proc.returncode == 0:
        run("umount", mnt)
    complaint = proc.stderr.decode(errors="replace").strip()
    return complaint if proc.returncode or "read-only" in complaint else None


class Volume:
    """A bare NTFS volume held in memory, with its metadata located."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)
        view = self.view()
        self.geo: Geometry = read_geometry(view)
        self.mft_runs = data_runs(
            read_record(view, self.geo, self.geo.mft_lcn * self.geo.cluster_size, 0)
        )

    def view(self) -> VolumeView:
        return VolumeView(io.BytesIO(bytes(self.data)), whole_disk(len(self.data)))

    def record(self, number: int) -> bytes:
        return read_mft_record(self.view(), self.geo, self.mft_runs, number)

    def record_offset(self, number: int) -> int:
        return record_offsets(self.geo, self.mft_runs, number, 1)[0]

    def data_attr(self, number: int) -> Attribute:
        return find_attribute(self.record(number), ATTR_DATA)

    def clusters(self, number: int, name: str = "") -> list[int]:
        """Allocated clusters of record `number`'s $DATA (or attribute `name` of any type)."""
        rec = self.record(number)
        attrs = [
            a
            for a in attributes(rec)
            if not a.resident and (a.name == name) and (name or a.type == ATTR_DATA)
        ]
        out: list[int] = []
        for run_ in attrs[0].runs:
            if run_.lcn is not None:
                out.extend(range(run_.lcn, run_.lcn + run_.length))
        return out

    def set_cluster_bit(self, cluster: int, used: bool) -> None:
        """Set or clear `cluster`'s bit in $Bitmap, in place."""
        cs = self.geo.cluster_size
        byte = cluster // 8
        pos = 0
        for run_ in self.data_attr(6).runs:
            n = run_.length * cs
            if pos <= byte < pos + n and run_.lcn is not None:
                off = run_.lcn * cs + byte - pos
                if used:
                    self.data[off] |= 1 << (cluster % 8)
                else:
                    self.data[off] &= ~(1 << (cluster % 8)) & 0xFF
                return
            pos += n
        raise AssertionError(f"cluster {cluster} not covered by $Bitmap")

    def patch_record(self, number: int, offset: int, value: bytes) -> None:
        """Write `value` at byte `offset` of MFT record `number` as seen after fixups (so a
        byte under a stride's sequence number goes into the update sequence array)."""
        base = self.record_offset(number)
        usa_off = struct.unpack_from("<H", self.data, base + 4)[0]
        for i, b in enumerate(value):
            pos = offset + i
            if pos % FIXUP_STRIDE >= FIXUP_STRIDE - 2:
                stride = pos // FIXUP_STRIDE + 1
                self.data[base + usa_off + 2 * stride + pos % 2] = b
            else:
                self.data[base + pos] = b


def protect(page: bytearray, usa_off: int, usn: int) -> bytearray:
    """Apply an update sequence array to a logical block (the inverse of fixups)."""
    strides = len(page) // FIXUP_STRIDE
    struct.pack_into("<HH", page, 4, usa_off, strides + 1)
    struct.pack_into("<H", page, usa_off, usn)
    for i in range(1, strides + 1):
        end = i * FIXUP_STRIDE
        page[usa_off + 2 * i : usa_off + 2 * i + 2] = page[end - 2 : end]
        struct.pack_into("<H", page, end - 2, usn)
    return page


def restart_page(
    lsn: int, clean: bool, file_size: int, open_client: bool = True, version: int = 1
) -> bytes:
    """One 4096-byte $LogFile restart page as Windows leaves it: one client ("NTFS"), in use
    unless `open_client` is False; flags RESTART_VOLUME_IS_CLEAN when `clean`; `version` 1
    is 1.1 (Windows up to 7, and 8+ after a full shutdown), 2 is 2.0 (Windows 8+ in use)."""
    page = bytearray(4096)
    page[:4] = b"RSTR"
    minor = 1 if version == 1 else 0
    struct.pack_into("<QIIHhh", page, 8, 0, 4096, 4096, 0x30, minor, version)
    ra = 0x30
    struct.pack_into(
        "<QHHHHIHHQIHHI",
        page,
        ra,
        lsn,
        1,  # log clients
        0xFFFF,  # free list
        0 if open_client else 0xFFFF,  # in-use list
        0x0002 if clean else 0,
        67 - file_size.bit_length(),  # sequence number bits, as ntfs-3g checks
        0x40 + 0xA0,  # restart area length
        0x40,  # client array offset
        file_size,
        0,
        0x30,  # log record header length
        0x40,  # log page data offset
        1,
    )
    client = ra + 0x40
    struct.pack_into("<QQHH", page, client, lsn, lsn, 0xFFFF, 0xFFFF)
    struct.pack_into("<I", page, client + 0x1C, 8)
    page[client + 0x20 : client + 0x28] = "NTFS".encode("utf-16-le")
    return bytes(protect(page, 0x1E, 1))


def write_log(vol: Volume, pages: list[bytes]) -> None:
    """Put `pages` (4096 bytes each) at the start of $LogFile, in place."""
    offset = vol.data_attr(2).runs[0].lcn
    assert offset is not None
    start = offset * vol.geo.cluster_size
    for i, page in enumerate(pages):
        vol.data[start + i * 4096 : start + (i + 1) * 4096] = page


def attribute_offset(rec: bytes | bytearray, atype: int) -> int:
    """Byte offset in an MFT record (fixups applied) of its first attribute of `atype`."""
    off = struct.unpack_from("<H", rec, 0x14)[0]
    while True:
        t, length = struct.unpack_from("<II", rec, off)
        if t == atype:
            return int(off)
        if t == 0xFFFFFFFF:
            raise AssertionError(f"no attribute 0x{atype:x}")
        off += length


def write_record(vol: Volume, number: int, logical: bytes) -> None:
    """Store MFT record `number` (fixups not applied) in $MFT, and in $MFTMirr when mirrored."""
    page = protect(bytearray(logical), struct.unpack_from("<H", logical, 4)[0], 7)
    vol.data[vol.record_offset(number) : vol.record_offset(number) + len(page)] = page
    if number < 4:
        mirror = vol.geo.mirror_lcn * vol.geo.cluster_size + number * vol.geo.record_size
        vol.data[mirror : mirror + len(page)] = page


def split_mft(vol: Volume, clusters: int, gap: int = 0) -> None:
    """Move $MFT's run list beyond its first `clusters` into extension record 15 and name it
    in a new $ATTRIBUTE_LIST of record 0, as Windows does for a fragmented $MFT. `gap`
    misstates the extension's first VCN (damage)."""
    rec0 = bytearray(vol.record(0))
    (run,) = vol.data_attr(0).runs
    assert run.lcn is not None and run.length > clusters and run.lcn + run.length < 128
    data = attribute_offset(rec0, 0x80)
    pairs = data + struct.unpack_from("<H", rec0, data + 0x20)[0]
    struct.pack_into("<q", rec0, data + 0x18, clusters - 1)  # highest VCN
    rec0[pairs : pairs + 8] = bytes([0x11, clusters, run.lcn, 0, 0, 0, 0, 0])
    entries = b"".join(
        _list_entry(atype, name, vcn, ref, inst)
        for atype, name, vcn, ref, inst in sorted(
            [*_listed(bytes(rec0)), (0x80, "", clusters + gap, 15 | 15 << 48, 3)]
        )
    )
    alist = struct.pack(
        "<IIBBHHHIHBB", 0x20, 0x18 + len(entries), 0, 0, 0x18, 0, 9, len(entries), 0x18, 0, 0
    )
    at = attribute_offset(rec0, 0x30)  # after $STANDARD_INFORMATION, in type order
    used = struct.unpack_from("<I", rec0, 0x18)[0]
    body = alist + entries
    rec0[at : used + len(body)] = body + rec0[at:used]
    struct.pack_into("<I", rec0, 0x18, used + len(body))
    write_record(vol, 0, bytes(rec0))
    rec15 = bytearray(vol.record(15))
    struct.pack_into("<Q", rec15, 0x20, 1 << 48)  # base record: 0, sequence 1
    first = struct.unpack_from("<H", rec15, 0x14)[0]
    length = 0x48
    header = struct.pack(
        "<IIBBHHHqqHHIqqq",
        0x80,
        length,
        1,
        0,
        0x40,
        0,
        3,
        clusters + gap,
        run.length - 1,
        0x40,
        0,
        0,
        0,
        0,
        0,
    )
    pairs15 = bytes([0x11, run.length - clusters, run.lcn + clusters]) + bytes(5)
    rec15[first : first + length + 8] = header + pairs15 + struct.pack("<II", 0xFFFFFFFF, 0)
    struct.pack_into("<I", rec15, 0x18, first + length + 8)
    write_record(vol, 15, bytes(rec15))


def _listed(rec: bytes) -> list[tuple[int, str, int, int, int]]:
    """(type, name, lowest VCN, reference, instance) of each attribute of MFT record 0."""
    out = []
    off = struct.unpack_from("<H", rec, 0x14)[0]
    while (atype := struct.unpack_from("<I", rec, off)[0]) != 0xFFFFFFFF:
        length, _nr, name_len, name_off, _fl, inst = struct.unpack_from("<IBBHHH", rec, off + 4)
        name = rec[off + name_off : off + name_off + 2 * name_len].decode("utf-16-le")
        out.append((atype, name, 0, 1 << 48, inst))
        off += length
    return out


def _list_entry(atype: int, name: str, vcn: int, ref: int, instance: int) -> bytes:
    raw = name.encode("utf-16-le")
    length = (0x1A + len(raw) + 7) & ~7
    head = struct.pack("<IHBBQQH", atype, length, len(raw) // 2, 0x1A, vcn, ref, instance)
    return (head + raw).ljust(length, b"\0")

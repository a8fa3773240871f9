"""Whether NTFS's $LogFile (MFT record 2) says the volume is clean, from its restart area.

$LogFile starts with two copies of a restart page, at offset 0 and at the page size (usually
4096). A restart page ("RSTR", or "CHKD" after chkdsk) is protected by an update sequence
array over `system_page_size` bytes; its header (chkdsk LSN 0x08, system page size 0x10, log
page size 0x14, restart area offset 0x18, version 0x1A/0x1C) points to the restart area:
current LSN 0x00, log clients 0x08, free client list 0x0A, in-use client list 0x0C, flags
0x0E (RESTART_VOLUME_IS_CLEAN = 0x0002), restart area length 0x14, client array offset 0x16.
The copy with the higher current LSN among the valid ones is the current one.

The volume is clean when no log client is in use (in-use list 0xFFFF) or the clean flag is
set, and the current restart page is not version 2.0: the checks ntfs-3g makes before it
writes to a volume (Windows 8+ writes version 2.0 while it may keep metadata cached for Fast
Startup, and ntfs-3g refuses those volumes). A $LogFile whose pages all begin with 0xFFFFFFFF
was emptied (ntfs-3g does this on unmount, mkntfs at format): nothing to replay, so clean.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.ntfsrecord import Attribute, Geometry, read_attribute, unprotect
from vmaccel.guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

RESTART_VOLUME_IS_CLEAN = 0x0002
NO_CLIENT = 0xFFFF
EMPTY = b"\xff\xff\xff\xff"
_SCAN_BYTES = 64 << 10  # restart pages sit at power-of-two offsets below this
_CLIENT_RECORD = 0xA0
_RESTART_AREA_MIN = 0x30


@dataclass(frozen=True)
class RestartArea:
    """The restart area of one valid restart page, at $LogFile byte `page_offset`."""

    page_offset: int
    current_lsn: int
    flags: int
    client_in_use_list: int
    version: tuple[int, int] = (1, 1)

    @property
    def closed(self) -> bool:
        """No replay pending: no client has the log open, or it was closed cleanly."""
        return self.client_in_use_list == NO_CLIENT or bool(self.flags & RESTART_VOLUME_IS_CLEAN)

    @property
    def clean(self) -> bool:
        """Closed, and not a version 2.0 log: Windows 8+ writes 2.0 while it may hold the
        volume's metadata cached for Fast Startup, and 1.1 when it dismounts completely."""
        return self.closed and self.version != (2, 0)


@dataclass(frozen=True)
class LogState:
    """The $LogFile's verdict: `area` is None when the log is empty (all 0xFF)."""

    area: RestartArea | None

    @property
    def clean(self) -> bool:
        return self.area is None or self.area.clean

    def describe(self) -> str:
        if self.area is None:
            return "$LogFile is empty"
        a = self.area
        state = "closed" if a.closed else "open"
        return (
            f"$LogFile restart area at {a.page_offset} is {state}, version "
            f"{a.version[0]}.{a.version[1]} (LSN {a.current_lsn}, flags 0x{a.flags:04x}, "
            f"in-use client list 0x{a.client_in_use_list:04x})"
        )


def log_state(view: VolumeView, geo: Geometry, data: Attribute) -> LogState:
    """Read the head of $LogFile (its unnamed $DATA `data`, at most 64 KiB, in as few reads
    as it has physically contiguous runs) and return the current restart area.

    Raises `GuestFsError` when the log is neither empty nor holds a valid restart page.
    """
    head = read_attribute(view, geo, data, _SCAN_BYTES)
    if len(head) < 2 * 4096:
        raise GuestFsError(f"ntfs: $LogFile is too small ({data.data_size} bytes)")
    areas: list[RestartArea] = []
    empty = True
    problems: list[str] = []
    inside = 0  # bytes [0, inside) belong to a valid restart page already found
    for pos in [0] + [1 << k for k in range(9, 16)]:
        if pos + 512 > len(head):
            break
        if pos < inside:
            continue
        magic = head[pos : pos + 4]
        if magic != EMPTY:
            empty = False
        if magic == b"RCRD":  # log record pages follow the restart pages
            break
        if magic not in (b"RSTR", b"CHKD"):
            continue
        try:
            areas.append(_restart_area(head, pos))
        except GuestFsError as exc:
            problems.append(str(exc))
            continue
        inside = pos + struct.unpack_from("<I", head, pos + 0x10)[0]
        if len(areas) == 2:
            break
    if empty:
        return LogState(None)
    if not areas:
        why = "; ".join(problems) or "no restart page found"
        raise GuestFsError(f"ntfs: $LogFile has no valid restart page ({why})")
    return LogState(max(areas, key=lambda a: a.current_lsn))


def _restart_area(head: bytes, pos: int) -> RestartArea:
    """Validate the restart page at `pos` of `head` (as ntfs-3g does) and parse its area."""
    what = f"$LogFile restart page at {pos}"
    chkdsk_lsn, sys_page, log_page, ra_off, minor, major = struct.unpack_from(
        "<QIIHhh", head, pos + 8
    )
    for size in (sys_page, log_page):
        if size < 512 or size & (size - 1):
            raise GuestFsError(f"ntfs: {what} has a bad page size {size}")
    if (major, minor) not in ((1, 1), (2, 0)):
        raise GuestFsError(f"ntfs: {what} has unknown version {major}.{minor}")
    if head[pos : pos + 4] == b"RSTR" and chkdsk_lsn:
        raise GuestFsError(f"ntfs: {what} names a chkdsk LSN but is not a CHKD page")
    if pos + sys_page > len(head):
        raise GuestFsError(f"ntfs: {what} runs past the end of $LogFile's head")
    page = unprotect(bytearray(head[pos : pos + sys_page]), head[pos : pos + 4], what)
    if ra_off & 7 or ra_off + _RESTART_AREA_MIN > sys_page:
        raise GuestFsError(f"ntfs: {what} has a bad restart area offset {ra_off}")
    lsn, clients, free_list, in_use = struct.unpack_from("<QHHH", page, ra_off)
    flags = struct.unpack_from("<H", page, ra_off + 0x0E)[0]
    ra_len, ca_off = struct.unpack_from("<HH", page, ra_off + 0x14)
    if ca_off & 7 or ca_off < _RESTART_AREA_MIN:
        raise GuestFsError(f"ntfs: {what} has a bad client array offset {ca_off}")
    if ra_off + ra_len > sys_page or ca_off + clients * _CLIENT_RECORD > ra_len:
        raise GuestFsError(f"ntfs: {what} has a restart area that overruns its page")
    for link in (free_list, in_use):
        if link != NO_CLIENT and link >= clients:
            raise GuestFsError(f"ntfs: {what} has a client list pointing past its clients")
    return RestartArea(pos, lsn, flags, in_use, (major, minor))

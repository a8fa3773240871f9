"""LVM metadata is trusted only when its checksums hold and its layout fits the volume;
otherwise the PV (and every LV on it) is read whole with the reason.

Checksums are recomputed here with LVM's own nibble-table algorithm (lib/misc/crc.c), written
out independently of guestfs.lvm, and that algorithm is checked against a real pvcreate.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.guestfs.imaging import DiskImage, patch_bytes, read_bytes
from tests.guestfs.verdict import assert_clean, assert_whole, build, report, sparse_copy
from vmaccel.guestfs.lvm import INITIAL_CRC, calc_crc

# lib/misc/crc.c: a 16-entry table, two nibbles per byte, no final inversion
_CRCTAB = (
    0x00000000, 0x1DB71064, 0x3B6E20C8, 0x26D930AC, 0x76DC4190, 0x6B6B51F4, 0x4DB26158,
    0x5005713C, 0xEDB88320, 0xF00F9344, 0xD6D6A3E8, 0xCB61B38C, 0x9B64C2B0, 0x86D3D2D4,
    0xA00AE278, 0xBDBDF21C,
)  # fmt: skip


def lvm_crc(data: bytes, crc: int = 0xF597A6CF) -> int:
    for byte in data:
        crc ^= byte
        crc = (crc >> 4) ^ _CRCTAB[crc & 0xF]
        crc = (crc >> 4) ^ _CRCTAB[crc & 0xF]
    return crc


@dataclass
class PvImage:
    """Raw access to the LVM PV at byte `base` of `path` (one metadata area, in front)."""

    path: Path
    base: int

    def __post_init__(self) -> None:
        head = read_bytes(self.path, self.base, 2048)
        self.sector = next(s for s in range(4) if head[s * 512 : s * 512 + 8] == b"LABELONE")
        self.label = self.base + self.sector * 512
        self.pvh = struct.unpack_from("<I", head, self.sector * 512 + 20)[0]
        mda_list = self.label + self.pvh + 40 + 32  # after one data area and its terminator
        self.mda = self.base + struct.unpack("<Q", read_bytes(self.path, mda_list, 8))[0]
        self.area_size = struct.unpack("<Q", read_bytes(self.path, mda_list + 8, 8))[0]

    def rlocn(self) -> tuple[int, int]:
        """(offset in the area, size) of the current metadata text."""
        offset, size = struct.unpack("<QQ", read_bytes(self.path, self.mda + 40, 16))
        return int(offset), int(size)

    def text(self) -> bytes:
        offset, size = self.rlocn()
        return read_bytes(self.path, self.mda + offset, size)

    def fix_label(self) -> None:
        body = read_bytes(self.path, self.label + 20, 512 - 20)
        patch_bytes(self.path, self.label + 16, struct.pack("<I", lvm_crc(body)))

    def fix_header(self) -> None:
        body = read_bytes(self.path, self.mda + 4, 512 - 4)
        patch_bytes(self.path, self.mda, struct.pack("<I", lvm_crc(body)))

    def rewrite_text(self, old: bytes, new: bytes) -> None:
        """Replace `old` by the same-length `new` in the current text; recompute checksums."""
        offset, _size = self.rlocn()
        text = self.text()
        assert len(old) == len(new) and text.count(old) == 1, old
        text = text.replace(old, new)
        patch_bytes(self.path, self.mda + offset, text)
        patch_bytes(self.path, self.mda + 56, struct.pack("<I", lvm_crc(text)))
        self.fix_header()


@pytest.fixture
def pv(gpt_disk: DiskImage, tmp_path: Path) -> PvImage:
    if not any(s.name.endswith("/data") for s in gpt_disk.filesystems):
        pytest.skip("the gpt fixture has no LVM PV (lvm or losetup missing)")
    return PvImage(sparse_copy(gpt_disk, tmp_path), 101 << 20)


def test_lvm_checksum_is_lvms_crc_on_a_real_pv(pv: PvImage) -> None:
    label = read_bytes(pv.path, pv.label, 512)
    header = read_bytes(pv.path, pv.mda, 512)
    stored_label, stored_header = struct.unpack_from("<I", label, 16)[0], header[:4]
    assert lvm_crc(label[20:]) == calc_crc(label[20:]) == stored_label
    assert calc_crc(header[4:]).to_bytes(4, "little") == stored_header
    assert calc_crc(pv.text()) == struct.unpack_from("<I", header, 56)[0]
    assert pv.text().endswith(b"\n\0")  # the checksummed size includes the trailing NUL
    assert calc_crc(b"") == INITIAL_CRC
    assert calc_crc(b"world", calc_crc(b"hello")) == calc_crc(b"helloworld")


def _pv_whole(path: Path, reason: str) -> None:
    rep = assert_whole(path, "p4", reason)
    assert rep.whole_reason and rep.whole_reason.startswith("unreadable LVM physical volume")
    assert not [r for r in build(path).volumes if "/" in r.volume.name]  # no LV mapped


def test_flipped_text_bytes_are_caught(pv: PvImage) -> None:
    offset, _size = pv.rlocn()
    text = pv.text()
    at = text.index(b"pe_count")
    patch_bytes(pv.path, pv.mda + offset + at + 11, b"7")
    _pv_whole(pv.path, "metadata text checksum mismatch")


def test_mda_header_checksum_is_verified(pv: PvImage) -> None:
    patch_bytes(pv.path, pv.mda + 64, b"\x01")  # second raw location
    _pv_whole(pv.path, "mda_header checksum mismatch")


def test_label_checksum_is_verified(pv: PvImage) -> None:
    patch_bytes(pv.path, pv.label + pv.pvh + 32, struct.pack("<Q", 1 << 40))
    _pv_whole(pv.path, f"label in sector {pv.sector}: checksum mismatch")


def test_device_size_beyond_the_volume_is_caught(pv: PvImage) -> None:
    patch_bytes(pv.path, pv.label + pv.pvh + 32, struct.pack("<Q", (48 << 20) + 512))
    pv.fix_label()
    _pv_whole(pv.path, f"the device holds {(48 << 20) + 512} bytes")


def test_extents_beyond_the_volume_are_caught(pv: PvImage) -> None:
    pv.rewrite_text(b"pe_count = 11", b"pe_count = 99")
    _pv_whole(pv.path, "99 extents of 4194304 bytes")


def test_pe_start_must_match_the_data_area(pv: PvImage) -> None:
    pv.rewrite_text(b"pe_start = 2048", b"pe_start = 4096")
    _pv_whole(pv.path, "metadata says pe_start 2097152")


def test_text_wrapping_around_the_circular_buffer(pv: PvImage, gpt_disk: DiskImage) -> None:
    """Place the current text so that it wraps to area offset 512: still read and verified."""
    _offset, size = pv.rlocn()
    text = pv.text()
    first = size // 3
    new_offset = pv.area_size - first
    patch_bytes(pv.path, pv.mda + new_offset, text[:first])
    patch_bytes(pv.path, pv.mda + 512, text[first:])
    patch_bytes(pv.path, pv.mda + 40, struct.pack("<Q", new_offset))
    pv.fix_header()
    assert assert_clean(pv.path, "p4") == report(gpt_disk.path, "p4")
    assert build(pv.path).used == build(gpt_disk.path).used
    patch_bytes(pv.path, pv.mda + 512 + 5, bytes([text[first + 5] ^ 1]))  # in the wrapped part
    _pv_whole(pv.path, "metadata text checksum mismatch")

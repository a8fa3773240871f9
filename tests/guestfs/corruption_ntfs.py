"""Generated corruptions of NTFS allocation metadata: $Bitmap, the run lists that find it,
and the boot sector.

Offsets used (NTFS on-disk format, little-endian): boot sector bytes/sector at 0x0B, sectors
per cluster 0x0D, total sectors 0x28, $MFT cluster 0x30, $MFTMirr cluster 0x38, record size
0x40. An MFT record's first attribute is at the u16 at 0x14; an attribute is (type u32,
length u32, non-resident u8 at 8, name length u8 at 9), a non-resident one has its mapping
pairs at the u16 at 0x20. A mapping pair is a header byte (low nibble: length bytes, high
nibble: LCN-delta bytes) and those little-endian fields.
"""

from __future__ import annotations

import random
import struct

from tests.guestfs.corruption import Kind, Mutation, Patch, Target, field_patch
from tests.guestfs.corruption_bitmap import Bitmap
from tests.guestfs.corruption_facts import NtfsFacts

BOOT_FIELDS = (
    (0x0B, "<H", "bytes per sector"),
    (0x0D, "<B", "sectors per cluster"),
    (0x28, "<Q", "total sectors"),
    (0x30, "<Q", "$MFT cluster"),
    (0x40, "<b", "clusters per MFT record"),
)


def mapping_pairs(record: bytes) -> tuple[int, int] | None:
    """(offset in the record, length) of the unnamed $DATA attribute's first mapping pair."""
    off = struct.unpack_from("<H", record, 0x14)[0]
    while off + 8 <= len(record):
        atype, alen = struct.unpack_from("<II", record, off)
        if atype == 0xFFFFFFFF or alen < 16:
            return None
        if atype == 0x80 and record[off + 8] and not record[off + 9]:
            pairs = off + struct.unpack_from("<H", record, off + 0x20)[0]
            header = record[pairs]
            return pairs, 1 + (header & 0xF) + (header >> 4)
        off += alen
    return None


class NtfsCorruptor:
    """Mutation kinds for one NTFS target (see `kinds`)."""

    def __init__(self, target: Target, facts: NtfsFacts) -> None:
        self.target = target
        self.facts = facts
        pieces = [(off, target.read_fs(off, n)) for off, n in facts.bitmap_bytes]
        self.bitmap = Bitmap("$Bitmap", pieces)
        self.boot = target.read_fs(0, 512)
        self.records = {n: target.read_fs(facts.record_offset(n), 1024) for n in (0, 6)}

    def kinds(self) -> dict[str, Kind]:
        return {
            **self.bitmap.kinds(),
            "bitmap-zero-cluster": self.zero_cluster,
            "runlist-redirect": self.redirect,
            "record-byte": self.record_byte,
            "boot-field": self.boot_field,
        }

    def zero_cluster(self, rng: random.Random) -> Mutation:
        """The issue's case: one whole cluster of $Bitmap zeroed."""
        lcn, n = rng.choice(self.facts.runs[6])
        c = rng.randrange(n)
        cs = self.facts.cluster_size
        return Mutation(
            "bitmap-zero-cluster",
            f"$Bitmap cluster {lcn + c} zeroed",
            (Patch((lcn + c) * cs, bytes(cs)),),
        )

    def redirect(self, rng: random.Random) -> Mutation:
        """Move the first run of $Bitmap's (or $MFT's) data elsewhere by a changed LCN."""
        number = rng.choice((6, 6, 0))
        record = self.records[number]
        where = mapping_pairs(record)
        assert where is not None, f"MFT record {number} has no $DATA mapping pairs"
        pairs, _length = where
        header = record[pairs]
        len_size, off_size = header & 0xF, header >> 4
        lcn_at = pairs + 1 + len_size
        lcn = int.from_bytes(record[lcn_at : lcn_at + off_size], "little", signed=True)
        new = rng.choice(
            (lcn + 1, lcn - 1, lcn + rng.randint(2, 64), self.facts.runs[1][0][0], 0, 1)
        )
        limit = 1 << (8 * off_size - 1)
        new = max(-limit, min(limit - 1, new))
        if new == lcn:
            new = lcn + 1 if lcn + 1 < limit else lcn - 1
        offset = self.facts.record_offset(number) + lcn_at
        return Mutation(
            "runlist-redirect",
            f"MFT record {number} $DATA first run LCN {lcn} -> {new}",
            (Patch(offset, new.to_bytes(off_size, "little", signed=True)),),
        )

    def record_byte(self, rng: random.Random) -> Mutation:
        number = rng.choice((6, 6, 0))
        i = rng.randrange(0x30, 0x1F0)
        old = self.records[number][i]
        new = old ^ rng.randrange(1, 256)
        return Mutation(
            "record-byte",
            f"MFT record {number} byte {i:#x} {old:#04x} -> {new:#04x}",
            (Patch(self.facts.record_offset(number) + i, bytes([new])),),
        )

    def boot_field(self, rng: random.Random) -> Mutation:
        off, fmt, name = rng.choice(BOOT_FIELDS)
        raw = self.boot[off : off + struct.calcsize(fmt)]
        if fmt == "<b":
            fmt = "<B"
        patch, text = field_patch(rng, off, raw, fmt, name)
        return Mutation("boot-field", f"boot sector {text}", (patch,))

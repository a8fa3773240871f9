"""Generated corruptions of XFS free-space metadata, located by `xfs_db` facts.

Offsets used (XFS on-disk format, big-endian): the AGF is sector 1 of its AG with the bnobt
root at 0x10, cntbt root 0x14, bnobt level 0x1C, flfirst 0x28, fllast 0x2C, flcount 0x30,
freeblks 0x34, longest 0x38. A short-form btree block has numrecs (u16) at 6 and, after a
16-byte (v4) or 56-byte (v5, CRC) header, (startblock u32, blockcount u32) leaf records.
Superblock fields: blocksize 0x04, dblocks 0x08, logstart 0x30, agblocks 0x54, agcount 0x58,
logblocks 0x60, versionnum 0x64, sectsize 0x66, agblklog 0x7C.
"""

from __future__ import annotations

import random
import struct

from tests.guestfs.corruption import Kind, Mutation, Patch, Target, field_patch
from tests.guestfs.corruption_facts import XfsAg, XfsFacts

AGF_FIELDS = (
    (0x10, ">I", "agf_bnoroot"),
    (0x1C, ">I", "agf_bnolevel"),
    (0x28, ">I", "agf_flfirst"),
    (0x2C, ">I", "agf_fllast"),
    (0x30, ">I", "agf_flcount"),
    (0x34, ">I", "agf_freeblks"),
    (0x38, ">I", "agf_longest"),
)
SUPER_FIELDS = (
    (0x04, ">I", "sb_blocksize"),
    (0x08, ">Q", "sb_dblocks"),
    (0x30, ">Q", "sb_logstart"),
    (0x54, ">I", "sb_agblocks"),
    (0x58, ">I", "sb_agcount"),
    (0x60, ">I", "sb_logblocks"),
    (0x64, ">H", "sb_versionnum"),
    (0x66, ">H", "sb_sectsize"),
    (0x7C, ">B", "sb_agblklog"),
)


class XfsCorruptor:
    """Mutation kinds for one XFS target (see `kinds`)."""

    def __init__(self, target: Target, facts: XfsFacts) -> None:
        self.target = target
        self.facts = facts
        self.header = 56 if facts.crc else 16
        self.ags = [ag for ag in facts.ags if ag.records]
        assert self.ags, "no AG with a single-level bnobt to corrupt"
        self.sb = target.read_fs(0, 512)

    def kinds(self) -> dict[str, Kind]:
        return {
            "bnobt-enlarge": self.enlarge,
            "bnobt-start-back": self.start_back,
            "bnobt-record-over-used": self.over_used,
            "bnobt-numrecs": self.numrecs,
            "bnobt-block-zero": self.zero_leaf,
            "bnobt-byte": self.leaf_byte,
            "cntbt-block-zero": self.zero_cnt,
            "agf-field": self.agf_field,
            "sb-field": self.super_field,
        }

    def _leaf(self, ag: XfsAg) -> int:
        return (ag.number * self.facts.agblocks + ag.bnoroot) * self.facts.block_size

    def _record(self, rng: random.Random) -> tuple[XfsAg, int, int, int, int]:
        ag = rng.choice(self.ags)
        i = rng.randrange(len(ag.records))
        start, count = ag.records[i]
        return ag, i, start, count, self._leaf(ag) + self.header + 8 * i

    def _set(self, kind: str, rng: random.Random, change: str) -> Mutation:
        ag, i, start, count, at = self._record(rng)
        limit = min(self.facts.agblocks, self.facts.dblocks - ag.number * self.facts.agblocks)
        if change == "enlarge":
            nxt = ag.records[i + 1][0] if i + 1 < len(ag.records) else limit
            new = (
                start,
                count
                + rng.choice((1, 2, max(1, (nxt - start - count) // 2), nxt - start - count + 1)),
            )
        elif change == "back":
            back = min(start, rng.choice((1, 8, 64, start)))
            new = (start - back, count + back)
        else:
            used_start = rng.randrange(0, max(1, start))
            new = (used_start, max(1, min(start - used_start, rng.choice((1, 16, 256)))))
        new = (new[0], max(1, min(new[1], limit - new[0])))
        return Mutation(
            kind,
            f"AG {ag.number} bnobt record {i} [{start},{count}] -> [{new[0]},{new[1]}]",
            (Patch(at, struct.pack(">II", *new)),),
        )

    def enlarge(self, rng: random.Random) -> Mutation:
        return self._set("bnobt-enlarge", rng, "enlarge")

    def start_back(self, rng: random.Random) -> Mutation:
        return self._set("bnobt-start-back", rng, "back")

    def over_used(self, rng: random.Random) -> Mutation:
        return self._set("bnobt-record-over-used", rng, "over")

    def numrecs(self, rng: random.Random) -> Mutation:
        ag = rng.choice(self.ags)
        n = len(ag.records)
        new = rng.choice((n + 1, n + 2, n + 50, 0))
        return Mutation(
            "bnobt-numrecs",
            f"AG {ag.number} bnobt numrecs {n} -> {new}",
            (Patch(self._leaf(ag) + 6, struct.pack(">H", new)),),
        )

    def zero_leaf(self, rng: random.Random) -> Mutation:
        ag = rng.choice(self.ags)
        return Mutation(
            "bnobt-block-zero",
            f"AG {ag.number} bnobt block {ag.bnoroot} zeroed",
            (Patch(self._leaf(ag), bytes(self.facts.block_size)),),
        )

    def zero_cnt(self, rng: random.Random) -> Mutation:
        ag = rng.choice(self.ags)
        off = (ag.number * self.facts.agblocks + ag.cntroot) * self.facts.block_size
        return Mutation(
            "cntbt-block-zero",
            f"AG {ag.number} cntbt block {ag.cntroot} zeroed",
            (Patch(off, bytes(self.facts.block_size)),),
        )

    def leaf_byte(self, rng: random.Random) -> Mutation:
        ag = rng.choice(self.ags)
        end = self.header + 8 * len(ag.records)
        i = rng.randrange(end)
        raw = self.target.read_fs(self._leaf(ag) + i, 1)[0]
        new = raw ^ rng.randrange(1, 256)
        return Mutation(
            "bnobt-byte",
            f"AG {ag.number} bnobt block byte {i} {raw:#04x} -> {new:#04x}",
            (Patch(self._leaf(ag) + i, bytes([new])),),
        )

    def agf_field(self, rng: random.Random) -> Mutation:
        ag = rng.choice(self.facts.ags)
        agf = self.facts.ag_offset(ag.number) + self.facts.sector_size
        off, fmt, name = rng.choice(AGF_FIELDS)
        raw = self.target.read_fs(agf + off, struct.calcsize(fmt))
        if name == "agf_bnoroot" and rng.random() < 0.5:
            patch = Patch(agf + off, struct.pack(fmt, ag.cntroot))
            text = f"agf_bnoroot {ag.bnoroot} -> {ag.cntroot} (the cntbt root)"
        else:
            patch, text = field_patch(rng, agf + off, raw, fmt, name)
        return Mutation("agf-field", f"AG {ag.number} {text}", (patch,))

    def super_field(self, rng: random.Random) -> Mutation:
        off, fmt, name = rng.choice(SUPER_FIELDS)
        patch, text = field_patch(rng, off, self.sb[off : off + struct.calcsize(fmt)], fmt, name)
        return Mutation("sb-field", f"superblock {text}", (patch,))

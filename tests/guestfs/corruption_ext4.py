"""Generated corruptions of ext2/3/4 allocation metadata, located by `dumpe2fs` facts.

Offsets used (ext4 on-disk format, little-endian): the superblock is fs bytes [1024, 2048);
a group descriptor holds bg_block_bitmap_lo at 0x00, bg_inode_bitmap_lo at 0x04,
bg_inode_table_lo at 0x08, bg_free_blocks_count_lo at 0x0C and bg_flags at 0x12
(BLOCK_UNINIT = 0x2); descriptors are `desc_size` bytes each from the block after the
superblock's block.
"""

from __future__ import annotations

import os
import random
import struct

from tests.guestfs.corruption import Kind, Mutation, Patch, Target, field_patch
from tests.guestfs.corruption_bitmap import Bitmap
from tests.guestfs.corruption_facts import Ext4Facts
from vmaccel.guestfs.extent import Extent

SB = 1024
# Consistent damage (bits cleared and the free counts raised to match) is beyond the issue's
# rule on a filesystem without checksums: only a walk of every inode could see it. Opt in.
ADVERSARIAL = bool(os.environ.get("VMACCEL_CORRUPTION_ADVERSARIAL"))
# (offset in the superblock, struct format, name) of fields the allocation map depends on.
SUPER_FIELDS = (
    (0x04, "<I", "s_blocks_count_lo"),
    (0x0C, "<I", "s_free_blocks_count_lo"),
    (0x14, "<I", "s_first_data_block"),
    (0x18, "<I", "s_log_block_size"),
    (0x20, "<I", "s_blocks_per_group"),
    (0x28, "<I", "s_inodes_per_group"),
    (0x3A, "<H", "s_state"),
    (0x58, "<H", "s_inode_size"),
    (0x5C, "<I", "s_feature_compat"),
    (0x60, "<I", "s_feature_incompat"),
    (0x64, "<I", "s_feature_ro_compat"),
    (0xCE, "<H", "s_reserved_gdt_blocks"),
    (0xFE, "<H", "s_desc_size"),
    (0x104, "<I", "s_first_meta_bg"),
)


class Ext4Corruptor:
    """Mutation kinds for one ext4 target (see `kinds`)."""

    def __init__(self, target: Target, facts: Ext4Facts, data: tuple[Extent, ...] = ()) -> None:
        """`data` (fs byte extents holding file data) is only needed by the opt-in
        consistent-damage kind."""
        self.target = target
        self.facts = facts
        self.data = data
        bs = facts.block_size
        self.bitmaps = []
        for g in facts.groups:
            nbytes = (g.last - g.first + 1 + 7) // 8
            raw = target.read_fs(g.block_bitmap * bs, nbytes)
            self.bitmaps.append(
                Bitmap(f"group {g.number} block bitmap", [(g.block_bitmap * bs, raw)])
            )
        self.gdt = target.read_fs(facts.gdt_offset, len(facts.groups) * facts.desc_size)
        self.sb = target.read_fs(SB, 1024)

    def kinds(self) -> dict[str, Kind]:
        def on_bitmap(name: str) -> Kind:
            return lambda rng: rng.choice(self.bitmaps).kinds()[name](rng)

        kinds: dict[str, Kind] = {
            name: on_bitmap(name)
            for name in ("bitmap-zero", "bitmap-fill-ff", "bitmap-clear-bits", "bitmap-flip")
        }
        kinds.update(
            {
                "desc-bitmap-pointer": self.bitmap_pointer,
                "desc-uninit-flag": self.uninit_flag,
                "desc-free-count": self.free_count,
                "desc-byte": self.desc_byte,
                "sb-field": self.super_field,
            }
        )
        if len(self.facts.groups) > 1:
            kinds["desc-copy-other-group"] = self.copy_desc
        if ADVERSARIAL and not self.facts.csum and self.data:
            kinds["bitmap-clear-counted"] = self.clear_counted
        return kinds

    def _desc(self, g: int) -> int:
        return self.facts.gdt_offset + g * self.facts.desc_size

    def bitmap_pointer(self, rng: random.Random) -> Mutation:
        """Point a group's block bitmap at another structure or a free block."""
        groups = self.facts.groups
        g = rng.choice(groups)
        choices = {
            "its inode bitmap": g.inode_bitmap,
            "its inode table": g.inode_table[0],
            "the next block": g.block_bitmap + 1,
        }
        others = [o for o in groups if o.number != g.number]
        if others:
            choices["another group's bitmap"] = rng.choice(others).block_bitmap
        free = [r for grp in groups for r in grp.free]
        if free:
            lo, hi = rng.choice(free)
            choices["a free block"] = rng.randint(lo, hi)
        what = rng.choice(sorted(choices))
        new = choices[what]
        return Mutation(
            "desc-bitmap-pointer",
            f"group {g.number} bg_block_bitmap {g.block_bitmap} -> {new} ({what})",
            (Patch(self._desc(g.number), struct.pack("<I", new & 0xFFFFFFFF)),),
        )

    def uninit_flag(self, rng: random.Random) -> Mutation:
        g = rng.randrange(len(self.facts.groups))
        off = self._desc(g) + 0x12
        flags = struct.unpack_from("<H", self.target.read_fs(off, 2))[0]
        return Mutation(
            "desc-uninit-flag",
            f"group {g} bg_flags {flags:#x} -> {flags | 2:#x} (BLOCK_UNINIT)",
            (Patch(off, struct.pack("<H", flags | 2)),),
        )

    def free_count(self, rng: random.Random) -> Mutation:
        g = rng.randrange(len(self.facts.groups))
        off = self._desc(g) + 0x0C
        patch, text = field_patch(
            rng, off, self.target.read_fs(off, 2), "<H", "bg_free_blocks_count_lo"
        )
        return Mutation("desc-free-count", f"group {g} {text}", (patch,))

    def desc_byte(self, rng: random.Random) -> Mutation:
        g = rng.randrange(len(self.facts.groups))
        i = rng.randrange(self.facts.desc_size)
        old = self.gdt[g * self.facts.desc_size + i]
        new = old ^ rng.randrange(1, 256)
        return Mutation(
            "desc-byte",
            f"group {g} descriptor byte {i:#x} {old:#04x} -> {new:#04x}",
            (Patch(self._desc(g) + i, bytes([new])),),
        )

    def copy_desc(self, rng: random.Random) -> Mutation:
        a, b = rng.sample(range(len(self.facts.groups)), 2)
        size = self.facts.desc_size
        return Mutation(
            "desc-copy-other-group",
            f"group {b} descriptor overwritten with group {a}'s",
            (Patch(self._desc(b), self.gdt[a * size : (a + 1) * size]),),
        )

    def super_field(self, rng: random.Random) -> Mutation:
        off, fmt, name = rng.choice(SUPER_FIELDS)
        patch, text = field_patch(
            rng, SB + off, self.sb[off : off + struct.calcsize(fmt)], fmt, name
        )
        return Mutation("sb-field", f"superblock {text}", (patch,))

    def clear_counted(self, rng: random.Random) -> Mutation:
        """Mark free some blocks that hold file data and raise the group's free count to
        match, so bitmap and counts agree (no checksums to betray it here)."""
        g = rng.choice([grp for grp in self.facts.groups if self._data_bits(grp.number)])
        data_bits = self._data_bits(g.number)
        bits = rng.sample(data_bits, min(len(data_bits), 1 + rng.randrange(8)))
        raw = bytearray(self.bitmaps[g.number].data)
        for bit in bits:
            raw[bit // 8] &= ~(1 << bit % 8)
        at = g.block_bitmap * self.facts.block_size
        off = self._desc(g.number) + 0x0C
        free = struct.unpack("<H", self.target.read_fs(off, 2))[0]
        return Mutation(
            "bitmap-clear-counted",
            f"group {g.number} blocks {sorted(g.first + b for b in bits)} marked free; "
            f"bg_free_blocks_count_lo {free} -> {free + len(bits)}",
            (Patch(at, bytes(raw)), Patch(off, struct.pack("<H", (free + len(bits)) & 0xFFFF))),
        )

    def _data_bits(self, g: int) -> list[int]:
        """Bit numbers of group `g`'s used blocks that hold file data (per the truth)."""
        first, bs = self.facts.groups[g].first, self.facts.block_size
        blocks = {o // bs for e in self.data for o in range(e.offset, e.end, bs)}
        return [b for b in self.bitmaps[g].set_bits if first + b in blocks]

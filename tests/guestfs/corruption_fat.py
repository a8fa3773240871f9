"""Generated corruptions of FAT12/16/32 allocation metadata: the FATs and the BPB.

Offsets used (Microsoft FAT specification, little-endian BPB): bytes per sector 0x0B,
sectors per cluster 0x0D, reserved sectors 0x0E, number of FATs 0x10, root entries 0x11,
16-bit total sectors 0x13, 16-bit FAT size 0x16, 32-bit total sectors 0x20, and on FAT32 the
32-bit FAT size 0x24 and root cluster 0x2C. A FAT entry of 0 means the cluster is free.
"""

from __future__ import annotations

import random
import struct

from tests.guestfs.corruption import Kind, Mutation, Patch, Target, field_patch
from tests.guestfs.corruption_facts import FatFacts, fat_entry, fat_entry_bytes

BPB_FIELDS = (
    (0x0B, "<H", "bytes per sector"),
    (0x0D, "<B", "sectors per cluster"),
    (0x0E, "<H", "reserved sectors"),
    (0x10, "<B", "number of FATs"),
    (0x11, "<H", "root entries"),
    (0x13, "<H", "total sectors (16)"),
    (0x16, "<H", "sectors per FAT (16)"),
    (0x20, "<I", "total sectors (32)"),
)
FAT32_FIELDS = ((0x24, "<I", "sectors per FAT (32)"), (0x2C, "<I", "root cluster"))


class FatCorruptor:
    """Mutation kinds for one FAT target (see `kinds`)."""

    def __init__(self, target: Target, facts: FatFacts) -> None:
        self.target = target
        self.facts = facts
        nbytes = ((facts.cluster_count + 2) * facts.bits + 7) // 8
        self.fat = target.read_fs(facts.fat_offsets[0], nbytes + 2)
        self.used = [
            n for n in range(2, facts.cluster_count + 2) if fat_entry(self.fat, facts.bits, n)
        ]
        self.boot = target.read_fs(0, 512)

    def kinds(self) -> dict[str, Kind]:
        kinds: dict[str, Kind] = {
            "fat1-zero-run": lambda rng: self.zero_run(rng, all_copies=False),
            "fat1-clear-entries": lambda rng: self.clear_entries(rng, all_copies=False),
            "fat-mark-bad": self.mark_bad,
            "bpb-field": self.bpb_field,
        }
        if len(self.facts.fat_offsets) > 1:
            kinds["fats-zero-run"] = lambda rng: self.zero_run(rng, all_copies=True)
            kinds["fats-clear-entries"] = lambda rng: self.clear_entries(rng, all_copies=True)
        return kinds

    def _copies(self, all_copies: bool) -> tuple[int, ...]:
        return self.facts.fat_offsets if all_copies else self.facts.fat_offsets[:1]

    def zero_run(self, rng: random.Random, all_copies: bool) -> Mutation:
        """Zero a run of FAT bytes starting inside a used cluster chain."""
        per = self.facts.bits / 8
        first = rng.choice(self.used)
        length = rng.choice((2, 16, 128, 1024, 8192))
        start = int(first * per)
        end = min(len(self.fat) - 2, start + length)
        patches = tuple(
            Patch(base + start, bytes(end - start)) for base in self._copies(all_copies)
        )
        kind = "fats-zero-run" if all_copies else "fat1-zero-run"
        where = "every FAT" if all_copies else "FAT 1"
        return Mutation(
            kind, f"{where}: bytes {start}..{end} (from cluster {first}) zeroed", patches
        )

    def clear_entries(self, rng: random.Random, all_copies: bool) -> Mutation:
        chosen = sorted(rng.sample(self.used, min(len(self.used), rng.choice((1, 3, 20)))))
        fat = bytearray(self.fat)
        for n in chosen:
            off, raw = fat_entry_bytes(self.facts, bytes(fat), n, 0)
            fat[off : off + len(raw)] = raw
        width = 4 if self.facts.bits == 32 else 2
        patches = []
        for n in chosen:
            off, _raw = fat_entry_bytes(self.facts, bytes(fat), n, 0)
            for base in self._copies(all_copies):
                patches.append(Patch(base + off, bytes(fat[off : off + width])))
        kind = "fats-clear-entries" if all_copies else "fat1-clear-entries"
        shown = ",".join(map(str, chosen[:6])) + ("..." if len(chosen) > 6 else "")
        return Mutation(
            kind, f"entries of clusters {shown} ({len(chosen)}) set free", tuple(patches)
        )

    def mark_bad(self, rng: random.Random) -> Mutation:
        """Mark a few free clusters bad (the harmless direction: more space in use)."""
        bad = {12: 0xFF7, 16: 0xFFF7, 32: 0x0FFFFFF7}[self.facts.bits]
        free = rng.sample(range(2, self.facts.cluster_count + 2), 5)
        patches = []
        for n in free:
            off, raw = fat_entry_bytes(self.facts, self.fat, n, bad)
            patches += [Patch(base + off, raw) for base in self.facts.fat_offsets]
        return Mutation("fat-mark-bad", f"clusters {free} marked bad in every FAT", tuple(patches))

    def bpb_field(self, rng: random.Random) -> Mutation:
        fields = BPB_FIELDS + (FAT32_FIELDS if self.facts.bits == 32 else ())
        off, fmt, name = rng.choice(fields)
        raw = self.boot[off : off + struct.calcsize(fmt)]
        patch, text = field_patch(rng, off, raw, fmt, name)
        return Mutation("bpb-field", f"BPB {text}", (patch,))

"""Generated corruptions of an LVM2 physical volume's label and metadata (partition level).

A changed digit in the metadata text can move a logical volume's segments or resize its
extents; the text carries a CRC32 in the metadata area header's raw location (and the header
one of its own), so a reader that checks them can refuse the PV rather than map the wrong
bytes. Offsets come from `tests.guestfs.corruption_facts.LvmFacts`.
"""

from __future__ import annotations

import random
import re

from tests.guestfs.corruption import Kind, Mutation, Patch, Target
from tests.guestfs.corruption_facts import LvmFacts

_PLACEMENT = re.compile(
    rb"(?:start_extent|extent_count|pe_start|pe_count|extent_size|stripe_count)\s*=\s*(\d+)"
    rb'|"pv\d+",\s*(\d+)'
)


class LvmCorruptor:
    """Mutation kinds on the PV itself; every patch is in partition offsets."""

    def __init__(self, target: Target, facts: LvmFacts) -> None:
        self.facts = facts
        with open(target.image, "rb") as f:
            f.seek(target.base + facts.text_offset)
            self.text = f.read(facts.text_size)
            f.seek(target.base + facts.mda_offset)
            self.mda_header = f.read(512)
        # Digits of the numbers that place data: extent sizes and counts, segment starts,
        # pe_start and the stripes' (pv, first extent) pairs; not uuids or timestamps.
        self.digits = [
            m.start(m.lastindex or 0) + i
            for m in _PLACEMENT.finditer(self.text)
            for i in range(len(m.group(m.lastindex or 0)))
        ]
        assert self.digits, "no placement numbers in the LVM metadata text"

    def kinds(self) -> dict[str, Kind]:
        return {"lvm-text-number": self.text_digit, "lvm-mda-header-byte": self.header_byte}

    def text_digit(self, rng: random.Random) -> Mutation:
        i = rng.choice(self.digits)
        old = self.text[i]
        new = rng.choice([c for c in b"0123456789" if c != old])
        line_start = self.text.rfind(b"\n", 0, i) + 1
        line = self.text[line_start : self.text.find(b"\n", i)].decode(errors="replace").strip()
        return Mutation(
            "lvm-text-number",
            f"metadata text byte {i} {chr(old)!r} -> {chr(new)!r} in {line!r}",
            (Patch(self.facts.text_offset + i, bytes([new])),),
            partition_level=True,
        )

    def header_byte(self, rng: random.Random) -> Mutation:
        i = rng.randrange(512)
        new = self.mda_header[i] ^ rng.randrange(1, 256)
        return Mutation(
            "lvm-mda-header-byte",
            f"metadata area header byte {i} {self.mda_header[i]:#04x} -> {new:#04x}",
            (Patch(self.facts.mda_offset + i, bytes([new])),),
            partition_level=True,
        )

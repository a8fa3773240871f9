"""An allocation bitmap (one bit per block or cluster, set = in use) and its mutations."""

from __future__ import annotations

import random
from collections.abc import Sequence

from tests.guestfs.corruption import Kind, Mutation, Patch


class Bitmap:
    """An allocation bitmap as the concatenation of pristine pieces ``(fs offset, bytes)``,
    and mutations of it. Set bits (used) cleared is the dangerous direction; bits set and
    0xFF fills are the harmless control direction."""

    RUNS = (1, 3, 16, 96, 768, 4096)

    def __init__(self, label: str, pieces: Sequence[tuple[int, bytes]]) -> None:
        self.label = label
        self.pieces = list(pieces)
        self.data = b"".join(p for _o, p in pieces)
        self.used = [i for i, b in enumerate(self.data) if b]
        self.set_bits = [i * 8 + b for i in self.used for b in range(8) if self.data[i] >> b & 1]

    def _patches(self, start: int, new: bytes) -> tuple[Patch, ...]:
        out, pos = [], 0
        for off, piece in self.pieces:
            lo, hi = max(start, pos), min(start + len(new), pos + len(piece))
            if lo < hi:
                out.append(Patch(off + lo - pos, new[lo - start : hi - start]))
            pos += len(piece)
        return tuple(out)

    def _run(self, rng: random.Random) -> tuple[int, int]:
        length = min(len(self.data), rng.choice((*self.RUNS, len(self.data))))
        anchor = rng.choice(self.used) if self.used and rng.random() < 0.9 else 0
        start = max(0, min(anchor - rng.randrange(length), len(self.data) - length))
        return start, length

    def zero(self, rng: random.Random) -> Mutation:
        start, n = self._run(rng)
        return Mutation(
            "bitmap-zero",
            f"{self.label}: bytes {start}..{start + n} zeroed",
            self._patches(start, bytes(n)),
        )

    def fill(self, rng: random.Random) -> Mutation:
        start, n = self._run(rng)
        return Mutation(
            "bitmap-fill-ff",
            f"{self.label}: bytes {start}..{start + n} set to 0xff",
            self._patches(start, b"\xff" * n),
        )

    def clear_bits(self, rng: random.Random) -> Mutation:
        bits = self.set_bits
        chosen = sorted(rng.sample(bits, min(len(bits), rng.choice((1, 2, 8, 64)))))
        return self._with_bits("bitmap-clear-bits", chosen, clear=True)

    def flip_bits(self, rng: random.Random) -> Mutation:
        chosen = sorted({rng.randrange(len(self.data) * 8) for _ in range(rng.choice((1, 4, 32)))})
        return self._with_bits("bitmap-flip", chosen, clear=False)

    def _with_bits(self, kind: str, bits: list[int], clear: bool) -> Mutation:
        data = bytearray(self.data)
        for bit in bits:
            data[bit // 8] = (
                data[bit // 8] & ~(1 << bit % 8) if clear else data[bit // 8] ^ 1 << bit % 8
            )
        touched = sorted({b // 8 for b in bits})
        patches = tuple(p for i in touched for p in self._patches(i, bytes(data[i : i + 1])))
        shown = ",".join(map(str, bits[:6])) + ("..." if len(bits) > 6 else "")
        return Mutation(
            kind,
            f"{self.label}: {len(bits)} bits ({shown}) {'cleared' if clear else 'flipped'}",
            patches,
        )

    def kinds(self) -> dict[str, Kind]:
        return {
            "bitmap-zero": self.zero,
            "bitmap-fill-ff": self.fill,
            "bitmap-clear-bits": self.clear_bits,
            "bitmap-flip": self.flip_bits,
        }

"""Fuzzing the disk layout: LVM text metadata and partition tables, judged by the matrix's oracle.

LVM text cases rewrite the metadata text of a real PV (numbers, strings, nesting, lists, huge
values) and then reseal it, like a hostile guest would: the raw location's length and CRC and
the metadata area header's CRC are recomputed, so the text parser itself is what is tested.
Partition cases change GPT header fields or entries (resealing the CRCs in half of them) and
MBR/EBR entries (including EBR chains that loop). A case passes when `build_allocation_map`
raises `GuestFsError` (the backup refuses the disk) or returns a map that still covers every
byte of file data and metadata of the `Truth`s (tests.guestfs.corruption.uncovered), and when
`browse_disk` opens the volumes raising only `GuestFsError`; never another exception,
a hang or a memory blow-up.
"""

from __future__ import annotations

import random
import re
import struct
import tracemalloc
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from tests.faults.treefuzz import CASE_LIMIT, MEMORY_LIMIT
from tests.guestfs.corruption import (
    CaseTimeout,
    PatchedDisk,
    Target,
    Truth,
    time_limit,
    uncovered,
)
from tests.guestfs.corruption_facts import LvmFacts
from vmaccel.guestfs.allocation import build_allocation_map, read_layout
from vmaccel.guestfs.browse import browse_disk
from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.lvm import calc_crc, read_physical_volume
from vmaccel.guestfs.volume import VolumeView

Patches = tuple[tuple[int, bytes], ...]  # (partition offset, bytes)
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]=,]|[^\s{}\[\]=,"#]+')
_HUGE = (b"0", b"-1", b"18446744073709551616", b"9" * 5000, b'"x"', b"[1,2]", b"{", b"}")


@dataclass(frozen=True)
class LayoutCase:
    """One generated layout mutation: `patches` in partition offsets of the case's target."""

    kind: str
    detail: str
    patches: Patches


def lvm_text_case(rng: random.Random, text: bytes, facts: LvmFacts, header: bytes) -> LayoutCase:
    """A mutated metadata text, resealed (see the module docstring)."""
    tokens = list(_TOKEN.finditer(text))
    new, detail = _mutate_text(rng, text, tokens)
    return LayoutCase("lvm-text", detail, resealed_text(new, facts, header))


def resealed_text(new: bytes, facts: LvmFacts, header: bytes) -> Patches:
    """Patches (PV offsets) putting `new` as the PV's current metadata text, with the raw
    location's length and CRC and the metadata area header's CRC recomputed."""
    raw_locn = struct.unpack_from("<QQII", header, 40)
    hdr = bytearray(header)
    struct.pack_into("<QQII", hdr, 40, raw_locn[0], len(new), calc_crc(new), raw_locn[3])
    struct.pack_into("<I", hdr, 0, calc_crc(bytes(hdr[4:])))
    return ((facts.text_offset, new), (facts.mda_offset, bytes(hdr)))


def _mutate_text(
    rng: random.Random, text: bytes, tokens: Sequence[re.Match[bytes]]
) -> tuple[bytes, str]:
    choice = rng.randrange(6)
    tok = rng.choice(tokens)
    lo, hi = tok.span()
    if choice == 0:  # a token replaced by an interesting value
        value = rng.choice(_HUGE)
        return text[:lo] + value + text[hi:], f"token {tok.group()[:20]!r} -> {value[:20]!r}"
    if choice == 1:  # a token deleted
        return text[:lo] + text[hi:], f"token {tok.group()[:20]!r} deleted"
    if choice == 2:  # deep nesting at a token
        depth = rng.choice((50, 2000, 20000))
        nest = b"n{" * depth + b"}" * depth
        return text[:lo] + nest + b" " + text[lo:], f"{depth} nested sections before byte {lo}"
    if choice == 3:  # a span of tokens duplicated (duplicate keys, sections, segments)
        end = rng.choice(tokens[tokens.index(tok) :]).end()
        return text[:end] + text[lo:end] + text[end:], f"bytes {lo}..{end} duplicated"
    if choice == 4:  # a number token nudged
        numbers = [t for t in tokens if t.group().isdigit()] or [tok]
        tok = rng.choice(numbers)
        lo, hi = tok.span()
        value = str(rng.choice((0, 1, 2**31, 2**63, int(tok.group() or b"0") + 1))).encode()
        return text[:lo] + value + text[hi:], f"number {tok.group()!r} -> {value!r}"
    value = rng.randbytes(rng.randint(1, 8))  # raw garbage (decoded with replacement)
    return text[:lo] + value + text[hi:], f"bytes at {lo} -> {value!r}"


def raw(disk: Target, offset: int, length: int) -> bytes:
    """Pristine bytes [offset, offset+length) of the image behind whole-disk target `disk`."""
    with open(disk.image, "rb") as f:
        f.seek(disk.base + offset)
        return f.read(length)


def gpt_case(rng: random.Random, disk: Target) -> LayoutCase:
    """A GPT header field or entry changed; CRCs resealed in about half the cases."""
    head = bytearray(raw(disk, 512, 512))
    entries_lba, count, esize, _ = struct.unpack_from("<QIII", head, 72)
    array = bytearray(raw(disk, entries_lba * 512, count * esize))
    used = [i for i in range(count) if array[i * esize : i * esize + 16] != bytes(16)]
    if rng.random() < 0.5:
        field, fmt = rng.choice(
            (
                (24, "<Q"),
                (32, "<Q"),
                (40, "<Q"),
                (48, "<Q"),
                (72, "<Q"),
                (80, "<I"),
                (84, "<I"),
                (12, "<I"),
            )
        )
        value = rng.choice((0, 1, 2**32 - 1, 2**31, rng.getrandbits(32), 1 << 20))
        struct.pack_into(fmt, head, field, value)
        detail = f"GPT header field at {field} -> {value}"
    else:
        i = rng.choice(used)
        other = rng.choice(used)
        field = rng.choice((32, 40))
        first, last = struct.unpack_from("<QQ", array, other * esize + 32)
        value = rng.choice((0, 1, first, last, last + 1, first - 1, 2**63, rng.getrandbits(40)))
        struct.pack_into("<Q", array, i * esize + field, value)
        detail = f"GPT entry {i + 1} {'first' if field == 32 else 'last'} LBA -> {value}"
    patches: list[tuple[int, bytes]] = [(entries_lba * 512, bytes(array))]
    if rng.random() < 0.5:
        struct.pack_into("<I", head, 88, zlib.crc32(array))
        hsize = min(struct.unpack_from("<I", head, 12)[0], 512)
        struct.pack_into("<I", head, 16, 0)
        struct.pack_into("<I", head, 16, zlib.crc32(bytes(head[:hsize])))
        detail += " (CRCs resealed)"
    patches.append((512, bytes(head)))
    return LayoutCase("gpt", detail, tuple(patches))


def mbr_case(rng: random.Random, disk: Target, ebrs: Sequence[int]) -> LayoutCase:
    """An MBR or EBR entry changed: type, start or size, or an EBR link made to loop.
    `ebrs` are the disk byte offsets of the EBRs (the first is the extended partition's)."""
    where = rng.choice((0, *ebrs))
    sector = bytearray(raw(disk, where, 512))
    slot = rng.randrange(4 if where == 0 else 2)
    pos = 446 + 16 * slot
    what = rng.randrange(4)
    if what == 0:
        value = rng.choice((0x05, 0x0F, 0x83, 0x07, 0xEE, 0x8E, 0))
        sector[pos + 4] = value
        detail = f"type -> {value:#04x}"
    elif what == 1 and ebrs:  # an EBR link pointing back at an earlier EBR (a loop)
        rel = (rng.choice(ebrs) - ebrs[0]) // 512
        struct.pack_into("<I", sector, pos + 8, rel)
        sector[pos + 4] = 0x05
        detail = f"link -> relative LBA {rel}"
    else:
        value = rng.choice((0, 1, 2**32 - 1, 2**31, rng.getrandbits(20)))
        struct.pack_into("<I", sector, pos + (8 if what == 2 else 12), value)
        detail = f"{'start' if what == 2 else 'size'} -> {value}"
    return LayoutCase(
        "mbr", f"sector at byte {where} slot {slot} {detail}", ((where, bytes(sector)),)
    )


@dataclass(frozen=True)
class LayoutVerdict:
    """One layout case's result: `failure` None when allowed; `refused` when the map raised;
    `relayout` when the mutation consistently moved a volume (see `judge_layout`)."""

    seed: int
    case: LayoutCase
    failure: str | None
    refused: bool
    relayout: bool = False

    def message(self) -> str:
        return f"seed={self.seed} kind={self.case.kind}: {self.case.detail} -> {self.failure}"


LayoutOf = Callable[[BinaryIO], object]  # a disk's volume placement, comparable with ==


def judge_layout(
    disk: Target,
    checks: Sequence[tuple[Target, Truth]],
    seed: int,
    case: LayoutCase,
    layout_of: LayoutOf,
) -> LayoutVerdict:
    """Map and browse `disk` (a whole-image target) with `case` applied; `checks` are the
    filesystems (targets over the same image, with their truth) whose bytes must be covered.

    A sealed layout (resealed GPT or LVM text, or an MBR, which has no checksum) that places
    volumes elsewhere is what the guest itself sees: bytes it leaves outside every volume are
    no longer the guest's data, so the oracle of the pristine image does not apply. Such a
    case (`layout_of` differs from the pristine disk's) is a `relayout`; it must still not
    crash, hang or blow memory up, and is counted apart."""
    refused, relayout = False, False
    failure: str | None = None
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        with time_limit(CASE_LIMIT):
            refused, failure = _map_and_browse(disk, checks, case.patches)
            if failure and failure.startswith("uncovered: "):
                relayout = _placement(disk, case.patches, layout_of) != _placement(
                    disk, (), layout_of
                )
                failure = None if relayout else failure
    except CaseTimeout:
        failure = f"hang: no answer within {CASE_LIMIT} s"
    except MemoryError:
        failure = "memory: MemoryError"
    except Exception as exc:  # noqa: BLE001 - any other exception is the finding
        failure = f"crash: {type(exc).__name__}: {exc}"
    peak = tracemalloc.get_traced_memory()[1] - base
    if failure is None and peak > MEMORY_LIMIT:
        failure = f"memory: {peak >> 20} MiB allocated at peak (limit {MEMORY_LIMIT >> 20})"
    return LayoutVerdict(seed, case, failure, refused, relayout)


def _placement(disk: Target, patches: Patches, layout_of: LayoutOf) -> object:
    with PatchedDisk(disk, patches) as f:
        return layout_of(f)  # type: ignore[arg-type]


def partition_placement(disk: BinaryIO) -> object:
    """Where the partition table puts each partition."""
    return [(p.index, p.start, p.size) for p in read_layout(disk).partition_table.partitions]


def lvm_placement(disk: BinaryIO) -> object:
    """Where the LVM metadata of the disk's PVs puts each LV."""
    out = []
    for vol in read_layout(disk).volumes:
        if vol.fstype == "lvm2":
            pv = read_physical_volume(VolumeView(disk, vol))
            out.append(
                (pv.pe_start, pv.extent_size, [(lv.name, lv.segments) for lv in pv.logical_volumes])
            )
    return out


def _map_and_browse(
    disk: Target, checks: Sequence[tuple[Target, Truth]], patches: Patches
) -> tuple[bool, str | None]:
    with PatchedDisk(disk, patches) as f:
        try:
            amap = build_allocation_map(f)  # type: ignore[arg-type]
        except GuestFsError:
            return True, None
        for target, truth in checks:
            missing = uncovered(amap, target, truth)
            if missing:
                return False, f"uncovered: {target.name}: {missing}"
        try:  # opening each volume is enough here: the tree fuzz walks them
            browse_disk(f)  # type: ignore[arg-type]
        except GuestFsError:
            return False, None
    return False, None


Generator = Callable[[random.Random], LayoutCase]

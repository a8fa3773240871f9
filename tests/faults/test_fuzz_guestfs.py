"""Hostile guest metadata (issue 10): fuzz every guestfs parser — no crash, hang or lost block.

1. File trees: seeded mutations of each filesystem's metadata (tests/faults/treefuzz.py), each
   walked through the whole `FileSystem` API, both straight through `open_filesystem` (a
   hostile guest writes valid checksums, so the parsers must not rely on the gate) and through
   `browse_disk`. Only `GuestFsError`s, error entries or an unbrowsable volume are allowed.
2. One damaged volume of a multi-volume disk leaves every other volume's tree identical.
3. Partition tables and LVM text metadata (tests/faults/layoutfuzz.py): a `GuestFsError` or a
   map that still covers every byte of file data (the corruption matrix's oracle).

Reproduce a failure from its message: ``VMACCEL_FUZZ_SEEDS=17,90`` with the test's node id.
"""

from __future__ import annotations

import logging
import os
import random
import re
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.faults.layoutfuzz import (
    Generator,
    LayoutCase,
    LayoutOf,
    LayoutVerdict,
    gpt_case,
    judge_layout,
    lvm_placement,
    lvm_text_case,
    mbr_case,
    partition_placement,
    resealed_text,
)
from tests.faults.tally import Tally, record, scale
from tests.faults.treefuzz import CASE_LIMIT, Verdict, Walk, browse_all, judge, mutate, whole_disk
from tests.guestfs.conftest import gpt_disk, mbr_disk, xfs_disk
from tests.guestfs.corruption import Mutation, PatchedDisk, Target, Truth, time_limit, uncovered
from tests.guestfs.corruption_facts import LvmFacts, lvm_facts
from tests.guestfs.corruption_fixtures import PLACES, fat12_disk, prepared
from tests.guestfs.corruption_targets import Get, Prepared
from tests.guestfs.imaging import DiskImage
from vmaccel.guestfs.allocation import build_allocation_map
from vmaccel.guestfs.browse import browse_disk

__all__ = ["fat12_disk", "gpt_disk", "mbr_disk", "prepared", "xfs_disk"]  # fixtures

SUITE = "test_fuzz_guestfs"
TREE_TARGETS = ("ext4", "ext3", "ext4-lvm", "xfs", "ntfs", "fat32", "fat16", "fat12")


def _seeds(count: int) -> list[int]:
    chosen = os.environ.get("VMACCEL_FUZZ_SEEDS")
    return [int(s) for s in chosen.split(",")] if chosen else list(range(count))


@pytest.fixture
def traced() -> Iterator[None]:
    """tracemalloc on for the test (peak memory per case), log records off (thousands)."""
    logging.disable(logging.CRITICAL)
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()
        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("name", TREE_TARGETS)
def test_tree_parsers_survive_hostile_metadata(name: str, prepared: Get, traced: None) -> None:
    p = prepared(name)
    tally = Tally(SUITE, "fuzz_case", notes=[f"tree {name}"])
    failures: list[Verdict] = []
    counts = {"unbrowsable": 0, "errors": 0}
    for seed in _seeds(scale(80, 3000)):
        rng = random.Random(f"tree/{name}/{seed}")
        mutation = mutate(rng, p.target, p.truth)
        mode = "browse" if seed % 5 == 4 else "tree"
        verdict = judge(p.target, seed, mode, mutation)
        tally.add(damaged=verdict.failure is not None)
        counts["unbrowsable"] += verdict.unbrowsable
        counts["errors"] += verdict.errors > 0
        if verdict.failure:
            failures.append(verdict)
    tally.notes.append(f"{counts}")
    record(tally)
    assert not failures, "\n".join(v.message() for v in failures[:20])


@pytest.mark.parametrize("name", ("ext4", "ntfs", "fat32", "ext4-lvm"))
def test_damage_stays_in_its_volume(
    name: str, prepared: Get, gpt_disk: DiskImage, traced: None
) -> None:
    """One damaged volume of the GPT disk: every other volume lists and reads identically."""
    p = prepared(name)
    disk = whole_disk(p.target, gpt_disk.size)
    pristine = browse_all(disk, Mutation("none", "pristine", ()))
    mine = volume_name_of(name, p.target)
    assert mine in pristine, f"{mine} is not among the disk's volumes {sorted(pristine)}"
    tally = Tally(SUITE, "fuzz_case", notes=[f"isolation {name}"])
    failures = []
    for seed in _seeds(scale(3, 100)):
        mutation = mutate(random.Random(f"iso/{name}/{seed}"), p.target, p.truth)
        seen = browse_all(disk, mutation)
        others = {k: v for k, v in seen.items() if k != mine}
        wrong = [k for k, v in others.items() if v != pristine[k]]
        crash = [f"{k}: {v.crash}" for k, v in seen.items() if isinstance(v, Walk) and v.crash]
        tally.add(damaged=bool(crash), wrong=bool(wrong))
        if wrong or crash:
            failures.append(f"seed={seed} {mutation.detail}: other volumes {wrong}, {crash}")
    record(tally)
    assert not failures, "\n".join(failures)


def volume_name_of(name: str, target: Target) -> str:
    """The browse name of the target's volume on its whole disk: its partition there ("p3"; the
    target's own `volume` is its name behind the synthetic MBR), or the LV's ("vg-data")."""
    if name in PLACES:
        return PLACES[name][1]
    vg, _, lv = target.volume.partition("/")
    return f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"


def _layout_run(
    kind: str,
    disk: Target,
    checks: list[tuple[Target, Truth]],
    make: Generator,
    layout_of: LayoutOf,
) -> None:
    tally = Tally(SUITE, "fuzz_case", notes=[f"layout {kind}"])
    failures: list[LayoutVerdict] = []
    refused = relayout = 0
    for seed in _seeds(scale(60, 2000)):
        case = make(random.Random(f"{kind}/{seed}"))
        verdict = judge_layout(disk, checks, seed, case, layout_of)
        tally.add(damaged=verdict.failure is not None)
        refused += verdict.refused
        relayout += verdict.relayout
        if verdict.failure:
            failures.append(verdict)
    tally.notes.append(f"refused {refused}, consistent relayouts {relayout}")
    record(tally)
    assert not failures, "\n".join(v.message() for v in failures[:20])


def _lvm_parts(p: Prepared) -> tuple[LvmFacts, bytes, bytes]:
    """The PV's located structures, its current metadata text and metadata area header."""
    with open(p.target.image, "rb") as f:
        f.seek(p.target.base)
        head = f.read(1 << 20)
    facts = lvm_facts(head)
    text = head[facts.text_offset : facts.text_offset + facts.text_size]
    return facts, text, head[facts.mda_offset : facts.mda_offset + 512]


def test_lvm_text_metadata_fuzz(prepared: Get, gpt_disk: DiskImage, traced: None) -> None:
    """Resealed LVM text mutations: a refusal, or a map that keeps the LV's data."""
    p = prepared("ext4-lvm")
    disk = whole_disk(p.target, gpt_disk.size)
    facts, text, header = _lvm_parts(p)
    base = p.target.base

    def make(rng: random.Random) -> LayoutCase:
        case = lvm_text_case(rng, text, facts, header)
        return replace(case, patches=tuple((base + o, d) for o, d in case.patches))

    _layout_run("lvm", disk, [(disk, p.truth)], make, lvm_placement)


def test_gpt_fuzz(prepared: Get, gpt_disk: DiskImage, traced: None) -> None:
    """GPT header fields and entries: a refusal, or a map that keeps every volume's data."""
    checks = [
        (whole_disk(prepared(n).target, gpt_disk.size), prepared(n).truth)
        for n in ("fat32", "ext4", "ntfs")
    ]
    disk = checks[0][0]
    _layout_run("gpt", disk, checks, lambda rng: gpt_case(rng, disk), partition_placement)


def test_mbr_fuzz(prepared: Get, mbr_disk: DiskImage, traced: None) -> None:
    """MBR and EBR entries, EBR chains made to loop: a refusal or a map keeping the data."""
    checks = [
        (whole_disk(prepared(n).target, mbr_disk.size), prepared(n).truth)
        for n in ("fat16", "ext3")
    ]
    disk = checks[0][0]
    ebrs = _ebr_chain(mbr_disk.path)
    assert len(ebrs) == 2, ebrs
    _layout_run("mbr", disk, checks, lambda rng: mbr_case(rng, disk, ebrs), partition_placement)


def _ebr_chain(image: Path) -> list[int]:
    """Disk byte offsets of the EBRs, read independently of guestfs.partition."""
    with open(image, "rb") as f:
        mbr = f.read(512)
        ext = next(
            struct.unpack_from("<I", mbr, 446 + 16 * i + 8)[0]
            for i in range(4)
            if mbr[446 + 16 * i + 4] in (0x05, 0x0F, 0x85)
        )
        out: list[int] = []
        lba = ext
        while lba and len(out) < 16:
            out.append(lba * 512)
            f.seek(lba * 512)
            ebr = f.read(512)
            nxt = struct.unpack_from("<I", ebr, 446 + 16 + 8)[0]
            lba = ext + nxt if ebr[446 + 16 + 4] in (0x05, 0x0F) else 0
    return out


_STRIPES = re.compile(rb"stripes = \[[^\]]*\]")

# Defects the fuzz found, pinned (each was a crash or a hang before its fix).
HOSTILE_LVM_TEXT: dict[str, Callable[[bytes], bytes]] = {
    "nesting": lambda t: t.replace(b"{", b"{" + b"n{" * 5000 + b"}" * 5000, 1),
    "section-is-a-number": lambda t: re.sub(
        rb"physical_volumes \{", b"physical_volumes = 5 x {", t
    ),
    "stripe-start-is-a-string": lambda t: re.sub(rb'("pv0", )\d+', rb'\1"x"', t, count=1),
    "stripes-is-a-number": lambda t: _STRIPES.sub(b"stripes = 7", t, count=1),
    "renamed-logical-volumes": lambda t: t.replace(b"logical_volumes", b"lv_list", 1),
}


@pytest.mark.parametrize("what", sorted(HOSTILE_LVM_TEXT))
def test_hostile_lvm_text_is_refused(what: str, prepared: Get, gpt_disk: DiskImage) -> None:
    """Resealed hostile text: the PV is taken whole with the reason, browse says why."""
    p = prepared("ext4-lvm")
    disk = whole_disk(p.target, gpt_disk.size)
    facts, text, header = _lvm_parts(p)
    new = HOSTILE_LVM_TEXT[what](text)
    assert new != text
    patches = tuple((p.target.base + o, d) for o, d in resealed_text(new, facts, header))
    with PatchedDisk(disk, patches) as f, time_limit(CASE_LIMIT):
        amap = build_allocation_map(f)  # type: ignore[arg-type]
        pv = next(r for r in amap.volumes if r.volume.name == "p4")
        assert pv.whole_reason and "unreadable LVM physical volume: lvm:" in pv.whole_reason
        assert uncovered(amap, disk, p.truth) is None
        browsed = {v.name: v for v in browse_disk(f)}  # type: ignore[arg-type]
        assert browsed["p4"].filesystem is None and "lvm:" in (browsed["p4"].reason or "")


NTFS_FOUND = {
    859: ("browse", "0xff over an index block: a B+ tree node pointing at itself (a hang)"),
    2313: ("tree", "u64 data size -> 2**64-1: a negative file size (ValueError on seek)"),
    2926: ("tree", "random boot sector bytes: a 16 GiB MFT record allocated by dissect"),
}


@pytest.mark.parametrize("seed", sorted(NTFS_FOUND))
def test_ntfs_defects_found_by_the_fuzz(seed: int, prepared: Get, traced: None) -> None:
    """Each of these NTFS cases failed before its fix (see `NTFS_FOUND`)."""
    p = prepared("ntfs")
    mutation = mutate(random.Random(f"tree/ntfs/{seed}"), p.target, p.truth)
    verdict = judge(p.target, seed, NTFS_FOUND[seed][0], mutation)
    assert verdict.failure is None, verdict.message()

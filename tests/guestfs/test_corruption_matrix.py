"""The corruption matrix (issue 9, item 1): free-block skipping never loses file data.

For every supported filesystem, thousands of seeded corruptions of its allocation metadata
(bitmaps zeroed or flipped, descriptors pointing elsewhere, free-space records enlarged, FAT
entries freed, counts and superblock fields nudged; see tests/guestfs/corruption_*.py). Each
case must end with every byte of file data, and the metadata needed to read it, inside the
allocation map: either the volume is taken whole or the map still covers them. A crash other
than a refused layout, a hang or a slow case fails too, and memory must stay flat.

One filesystem: ``pytest "tests/guestfs/test_corruption_matrix.py::test_corruption_matrix[ntfs]"``
(ids: ext4, ext4-lvm, ext3, ntfs, xfs, fat32, fat16, fat12). One case, from a failure message's
seed (sweep seeds too): ``VMACCEL_CORRUPTION_SEEDS=1234,1000357`` with that node id. More
cases: ``VMACCEL_CORRUPTION_CASES=3000`` per filesystem (default 500), or the sweep of 3000
other seeds per filesystem with ``VMACCEL_CORRUPTION_SWEEP=1`` (marked slow; under a minute).
``VMACCEL_CORRUPTION_REPORT=<dir>`` writes each run's per-kind counts and failures as JSON.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.guestfs.corruption import CaseResult, Mutation, Patch, pick_kind, run_case
from tests.guestfs.corruption_facts import Ext4Facts, NtfsFacts
from tests.guestfs.corruption_targets import TARGETS, Get, Prepared
from tests.guestfs.imaging import MiB
from vmaccel.guestfs.extent import Extent, intersect, merge, total

pytest_plugins = ["tests.guestfs.corruption_fixtures"]

CASES = int(os.environ.get("VMACCEL_CORRUPTION_CASES", "500"))
SWEEP_CASES = 3000
MAX_RSS_GROWTH = 256 * MiB
NO_CHANGE = Mutation("none", "pristine image", ())


def _seeds(default: Iterable[int]) -> list[int]:
    chosen = os.environ.get("VMACCEL_CORRUPTION_SEEDS")
    return [int(s) for s in chosen.split(",")] if chosen else list(default)


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _summary(name: str, results: list[CaseResult], seconds: float) -> dict[str, object]:
    kinds = sorted({r.mutation.kind for r in results})
    per_kind = {
        k: {
            "cases": sum(r.mutation.kind == k for r in results),
            "failed": sum(r.mutation.kind == k and r.failure is not None for r in results),
            "whole": sum(r.mutation.kind == k and r.whole_reason is not None for r in results),
        }
        for k in kinds
    }
    return {
        "target": name,
        "cases": len(results),
        "failed": sum(r.failure is not None for r in results),
        "seconds": round(seconds, 2),
        "cases_per_second": round(len(results) / seconds, 1) if seconds else None,
        "slowest_case": max(
            ((round(r.seconds, 3), r.seed, r.mutation.kind) for r in results), default=None
        ),
        "kinds": per_kind,
    }


def _run_matrix(p: Prepared, seeds: list[int]) -> None:
    rss_before = _rss()
    started = time.perf_counter()
    # Thousands of "taken whole" warnings: pytest's log capture would keep every record, and
    # with it every exception passed as a log argument and the parser frames it holds.
    logging.disable(logging.WARNING)
    try:
        results = [run_case(p.target, p.truth, s, pick_kind(p.kinds, p.target, s)) for s in seeds]
    finally:
        logging.disable(logging.NOTSET)
    seconds = time.perf_counter() - started
    summary = _summary(p.target.name, results, seconds)
    print(json.dumps(summary, indent=1))
    report_dir = os.environ.get("VMACCEL_CORRUPTION_REPORT")
    if report_dir:
        Path(report_dir).mkdir(parents=True, exist_ok=True)
        path = Path(report_dir) / f"{p.target.name}-{seeds[0]}.json"
        failures = [r.message() for r in results if r.failure]
        path.write_text(json.dumps({**summary, "failures": failures}, indent=1))
    failed = [r for r in results if r.failure]
    first_per_kind = {r.mutation.kind: r for r in reversed(failed)}
    shown = list(dict.fromkeys([*first_per_kind.values(), *failed[:10]]))
    counts = Counter(r.mutation.kind for r in failed)
    assert not failed, (
        f"{len(failed)} of {len(results)} corruptions of {p.target.name} lose data or fail "
        f"(by kind: {dict(sorted(counts.items()))}); e.g.:\n"
        + "\n".join(r.message() for r in shown)
    )
    assert _rss() - rss_before < MAX_RSS_GROWTH, f"memory grew by {(_rss() - rss_before) >> 20} MiB"


@pytest.mark.parametrize("name", TARGETS)
def test_pristine_map_covers_the_truth(name: str, prepared: Get) -> None:
    """The oracle agrees with the map on the untouched image, and the map gives space up
    there (so a case that keeps the volume mapped is a real test of the mutation)."""
    p = prepared(name)
    result = run_case(p.target, p.truth, 0, NO_CHANGE)
    assert result.failure is None, result.message()
    assert result.whole_reason is None, result.whole_reason
    assert sum(e.length for e in p.truth.data) > 256 * 1024, p.truth.notes


@pytest.mark.parametrize("name", TARGETS)
def test_corruption_matrix(name: str, prepared: Get) -> None:
    _run_matrix(prepared(name), _seeds(range(CASES)))


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("VMACCEL_CORRUPTION_SWEEP"), reason="set VMACCEL_CORRUPTION_SWEEP=1"
)
@pytest.mark.parametrize("name", TARGETS)
def test_corruption_sweep(name: str, prepared: Get) -> None:
    _run_matrix(prepared(name), _seeds(range(1_000_000, 1_000_000 + SWEEP_CASES)))


# The two cases of the issue, on the image they were found on (tests/guestimages "gpt"),
# mapped as the whole disk (every partition, the real GPT), not behind a synthetic MBR.


def _hit(p: Prepared, freed: list[Extent]) -> int:
    """Bytes of file data inside `freed` (fs offsets): what a map trusting the damage loses."""
    return total(intersect(merge(freed), p.truth.data))


def _freed_by_zeroing(bitmap: bytes, first_unit: int, unit: int) -> list[Extent]:
    return [
        Extent((first_unit + i) * unit, unit)
        for i in range(len(bitmap) * 8)
        if bitmap[i // 8] >> i % 8 & 1
    ]


def test_issue_ext4_group1_bitmap_768_bytes_zeroed(issue_volume: Get) -> None:
    p = issue_volume("linux")
    assert isinstance(p.facts, Ext4Facts)
    bs, g1 = p.facts.block_size, p.facts.groups[1]
    bitmap_at = g1.block_bitmap * bs
    bitmap = p.target.read_fs(bitmap_at, bs)
    # Start at the first byte of group 1's bitmap that maps file data (big/random.bin).
    first_data = next(e.offset for e in p.truth.data if e.end > g1.first * bs)
    start = max(0, (first_data // bs - g1.first) // 8)
    freed = _freed_by_zeroing(bitmap[start : start + 768], g1.first + start * 8, bs)
    assert _hit(p, freed) > 4 * MiB  # the damage really frees megabytes of live data
    mutation = Mutation(
        "issue-ext4",
        f"group 1 block bitmap bytes {start}..{start + 768} zeroed",
        (Patch(bitmap_at + start, bytes(768)),),
    )
    result = run_case(p.target, p.truth, 0, mutation)
    assert result.failure is None, result.message()


def test_issue_ntfs_bitmap_cluster_zeroed(issue_volume: Get) -> None:
    p = issue_volume("windows")
    assert isinstance(p.facts, NtfsFacts)
    cs = p.facts.cluster_size
    lcn = p.facts.runs[6][0][0]
    freed = _freed_by_zeroing(p.target.read_fs(lcn * cs, cs), 0, cs)
    assert _hit(p, freed) > 40 * MiB and Extent(0, cs) in freed  # data and the boot sector
    mutation = Mutation(
        "issue-ntfs", f"$Bitmap cluster {lcn} zeroed", (Patch(lcn * cs, bytes(cs)),)
    )
    result = run_case(p.target, p.truth, 0, mutation)
    assert result.failure is None, result.message()

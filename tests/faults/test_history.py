"""A long history (issue 10's fault matrix): a real guest disk lives day after day (files
rewritten, appended, deleted, created through its filesystems: testbed/guestimages/guestday.py)
and is backed up every simulated day (`vmaccel backup --source file:`), pruned every day with
a GFS policy and garbage-collected every week, like a real schedule.

At the end (after the week's gc): `verify --full` is clean; exactly the restore points the
GFS rule keeps remain, each restores (`vmaccel restore disk`) to its day's disk (every block
the guest used byte for byte, free blocks as they were or as zeros: backups skip free blocks)
and mounts to its day's file trees; and the repository takes at most 1.1x the unique data it
holds as stored (tests/faults/footprint.py defines both sides), also right after every weekly
gc. Along the way, after every gc, `verify` is clean and the oldest remaining restore point
(the one whose chunks gc has moved the most) still restores exactly.

CI runs 20 days; `VMACCEL_FAULTS_LONG=1` (bench/bench_faults.py) runs 60. One
``history_day`` tally event per simulated day: `damaged` when a verify after it failed,
`lost` when the day's backup should remain but does not restore, `wrong_bytes` when it
restores to other bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testbed.guestimages.guestday import apply_day
from tests.faults.footprint import Footprint, measure
from tests.faults.history import (
    DayRecord,
    SimulatedClock,
    build_disk,
    check_restored,
    expected_kept,
)
from tests.faults.tally import Tally, record, scale
from tests.plugin.conftest import Cli

KEEP = {"daily": 7, "weekly": 4, "monthly": 3}
GC_EVERY = 7  # days
FRACTION = 0.1  # of each volume's files changed per day
MAX_OVERHEAD = 1.1
MAX_DEAD = 0.06
NAME = "history"


class History:
    """One repository, one guest disk, and what every remaining day's disk held."""

    def __init__(self, cli: Cli, repo: Path, work: Path, clock: SimulatedClock) -> None:
        self.cli, self.repo, self.work, self.clock = cli, repo, work, clock
        self.image = build_disk(work / "disk.img")
        self.block_size = json.loads((repo / "config").read_text())["block_size"]
        self.records: dict[int, DayRecord] = {}  # by backup id, only the remaining ones
        self.all_days: list[DayRecord] = []
        self.unique_blocks: dict[bytes, int] = {}
        self.after_gc: dict[int, Footprint] = {}  # by day, right after that day's gc

    def ok(self, *args: str | Path) -> Any:
        result = self.cli(*args, "--repo", self.repo, "--json")
        assert result.rc == 0, f"vmaccel {' '.join(map(str, args))}: {result.err}{result.out}"
        return result.json

    def live_day(self, day: int) -> None:
        self.clock.set_day(day)
        if day:
            self.image = apply_day(self.image, self.image.path, FRACTION, seed=day).image
        rec = DayRecord.take(day, self.image, self.block_size)
        report = self.ok("backup", "--source", f"file:{self.image.path}", "--name", NAME)
        (vm,) = report["vms"]
        assert vm["disks"][0]["mode"] == ("full" if day == 0 else "incremental")
        rec.backup_id = vm["backup_id"]
        self.records[rec.backup_id] = rec
        self.all_days.append(rec)
        pruned = self.ok("prune", *(f"--keep-{rule}={n}" for rule, n in KEEP.items()))
        for gone in pruned["vms"].get(NAME, {}).get("removed", []):
            del self.records[gone["id"]]
        if day % GC_EVERY == GC_EVERY - 1:
            self.ok("gc")
            if self.cli("verify", "--repo", self.repo).rc != 0:
                rec.flags.add("damaged")
            self.after_gc[day] = measure(self.repo)
            oldest = self.records[min(self.records)]
            self.check(oldest, trees=False)

    def check(self, rec: DayRecord, trees: bool = True) -> None:
        """Restore `rec`'s backup with the CLI and compare it with the day's disk."""
        out = self.work / "restored.img"
        result = self.cli(
            "restore",
            "disk",
            str(rec.backup_id),
            "disk0",
            "--to",
            out,
            "--repo",
            self.repo,
            "--force",
        )
        if result.rc != 0:
            rec.flags.add("lost")
            return
        found = check_restored(out, rec, trees)
        self.unique_blocks.update(found.blocks)
        if not found.ok:
            rec.flags.add("wrong")
        out.unlink()


def test_sixty_days_of_backups_prune_and_gc(
    cli: Cli,
    new_repo: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    days = scale(20, 60)
    history = History(cli, new_repo("repo"), tmp_path, SimulatedClock(monkeypatch))
    tally = Tally("test_history", "history_day")
    try:
        for day in range(days):
            history.live_day(day)
        before_gc = measure(history.repo)
        if days % GC_EVERY:
            history.ok("gc")  # the week's gc ends the history, so its space is measured
        remaining = {rec.day for rec in history.records.values()}
        kept = expected_kept(range(days), **KEEP)
        for rec in history.all_days:
            if rec.day in kept and rec.day not in remaining:
                rec.flags.add("lost")
        history.unique_blocks.clear()
        for rec in history.records.values():
            history.check(rec)
        if cli("verify", "--full", "--repo", history.repo).rc != 0:
            history.all_days[-1].flags.add("damaged")
        size = measure(history.repo)
        tally.notes.append(f"{days} days: {size.describe()}")
        tally.notes.append(f"before the last gc: {before_gc.describe()}")
        tally.notes.append(
            "after each weekly gc, by day: "
            + ", ".join(
                f"{d}: {f.overhead:.3f}x, {f.dead / f.packs:.1%} dead"
                for d, f in history.after_gc.items()
            )
        )
        tally.notes.append(json.dumps(size.to_dict()))
    finally:
        for rec in history.all_days:
            tally.add(
                damaged="damaged" in rec.flags,
                lost="lost" in rec.flags,
                wrong="wrong" in rec.flags,
            )
        record(tally)
    print("\n".join(tally.notes))
    assert {d: r.flags for d, r in enumerate(history.all_days) if r.flags} == {}
    assert remaining == kept
    assert sum(history.unique_blocks.values()) == size.unique_raw
    assert size.overhead <= MAX_OVERHEAD, size.describe()
    # gc's max_unused (5% of the pack bytes that stay, counted before repacking shrinks them):
    # with the per-pack rule alone, 20 days left 6.9% dead here and 60 days 1.18x.
    assert size.dead <= MAX_DEAD * size.packs, size.describe()
    assert all(f.overhead <= MAX_OVERHEAD for f in history.after_gc.values()), tally.notes

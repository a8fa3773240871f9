"""A long history of one guest disk: the simulated clock, what each day's disk held, the
retention oracle, and the check of a restored disk against the day it was taken.

The clock: backups stamp their start with ``time.time()`` (catalog.backup) and retention
groups them by the UTC day, ISO week and month of that stamp; gc's grace period compares
``time.time()`` with the pack rows' creation stamps. The CLI runs in-process, so
`SimulatedClock` moves this process's ``time.time`` (only it: ``monotonic``, which every
timeout uses, is left alone) to noon of simulated day N plus the real seconds since the test
moved to day N. Every wall-clock reader of the product then agrees on the simulated date, and gc's
default grace period (an hour) works as it would in a real daily schedule. No product code
changes for it. File mtimes stay real (after the simulated dates); gc reads them only for
temporary and orphan files, which it would then keep as young, and a sequential history
leaves none.

A day's disk is remembered compactly (`DayRecord`): one SHA-256 per 64 KiB block (None for
a hole or all-zero block) and the extents the guest filesystems use, ~100 KB for 192 MiB.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from testbed.guestimages import builder
from testbed.guestimages.layout import ImageSpec, LvSpec, PartSpec
from testbed.guestimages.model import GuestImage
from testbed.guestimages.mounts import data_ranges, mounted
from testbed.guestimages.scan import diff_trees, scan_tree
from tests.plugin.imagecheck import used_extents
from vmaccel.catalog.retention import PERIODS
from vmaccel.guestfs.extent import Extent

DAY = 86_400.0
# A Monday, so simulated weeks start on day 0; 60 days reach into a third month.
EPOCH = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)

# GPT, 192 MiB: FAT32 ESP, ext4 root with the 50 MiB random file (rewritten a little every
# day, the common case), NTFS, and an ext4 LV of two segments on an LVM PV.
HISTORY_SPEC = ImageSpec(
    "history",
    "gpt",
    192,
    (
        PartSpec(1, 1, 40, "vfat", "esp", "ESP", big_file=False),
        PartSpec(2, 41, 72, "ext4", "linux", "root"),
        PartSpec(3, 113, 24, "ntfs", "windows", "Windows", big_file=False),
        PartSpec(4, 137, 54, "lvm", "pv"),
    ),
    lvs=(LvSpec("data", "ext4", "lvdata", segments=(3, 3), big_file=False),),
)


def build_disk(path: Path) -> GuestImage:
    """Build the history's guest disk at `path` with the real tools (~1-2 s)."""
    return builder.build_image(HISTORY_SPEC, path)


class SimulatedClock:
    """This process's ``time.time`` at noon UTC of simulated day `day` (from `EPOCH`) plus
    the real seconds elapsed since `set_day`; only ever moves forward."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._real = time.time
        self._offset = 0.0
        self.day = -1
        monkeypatch.setattr(time, "time", self.now)

    def now(self) -> float:
        return self._real() + self._offset

    def set_day(self, day: int) -> None:
        if day <= self.day:
            raise ValueError(f"the clock only moves forward (day {self.day} -> {day})")
        self.day = day
        self._offset = EPOCH.timestamp() + day * DAY - self._real()


@dataclass
class DayRecord:
    """What the disk held when day `day`'s backup read it: per-block digests (None: the block
    is a hole or all zeros), the guest's used extents, and the expected guest file trees."""

    day: int
    image: GuestImage
    block_size: int
    digests: list[bytes | None]
    used: tuple[Extent, ...]
    backup_id: int = 0
    flags: set[str] = field(default_factory=set)

    @classmethod
    def take(cls, day: int, image: GuestImage, block_size: int) -> DayRecord:
        return cls(
            day, image, block_size, block_digests(image.path, block_size), used_extents(image.path)
        )

    def used_blocks(self) -> set[int]:
        bs = self.block_size
        return {i for e in self.used for i in range(e.offset // bs, (e.end + bs - 1) // bs)}


def block_digests(path: Path, block_size: int) -> list[bytes | None]:
    """SHA-256 of each `block_size` block of `path`; None for all-zero blocks and holes
    (holes found with SEEK_DATA, so a sparse disk costs its data, not its size)."""
    size = path.stat().st_size
    out: list[bytes | None] = [None] * ((size + block_size - 1) // block_size)
    zero = bytes(block_size)
    fd = os.open(path, os.O_RDONLY)
    try:
        blocks: set[int] = set()
        for start, end in data_ranges(fd, 0, size):
            blocks.update(range(start // block_size, (end + block_size - 1) // block_size))
        for i in sorted(blocks):
            data = os.pread(fd, block_size, i * block_size)
            if data != zero[: len(data)]:
                out[i] = hashlib.sha256(data).digest()
    finally:
        os.close(fd)
    return out


@dataclass
class RestoreCheck:
    """A restored disk against its `DayRecord`: blocks that differ (`wrong`: a used block
    not equal to the source, or any block neither equal nor zero), tree differences, and the
    distinct non-zero blocks seen (digest -> length) for the unique-data count."""

    wrong: list[int]
    trees: list[str]
    blocks: dict[bytes, int]

    @property
    def ok(self) -> bool:
        return not self.wrong and not self.trees


def check_restored(restored: Path, record: DayRecord, trees: bool = True) -> RestoreCheck:
    """Compare `restored` (a whole restored disk) with `record`: every block the guest uses
    equals the source; a free block either equals the source or reads as zeros (free-block
    skipping made it a hole); with `trees`, every volume mounts and holds exactly the day's
    files (names, sizes, SHA-256, modes, mtimes), which does not rely on the product's
    allocation map at all. A volume that does not mount is a tree difference."""
    if restored.stat().st_size != record.image.size:
        return RestoreCheck([-1], [f"restored {restored.stat().st_size} bytes"], {})
    got = block_digests(restored, record.block_size)
    used = record.used_blocks()
    wrong = [
        i
        for i, (want, have) in enumerate(zip(record.digests, got, strict=True))
        if have != want and (have is not None or i in used)
    ]
    blocks = _block_lengths(restored, got, record.block_size)
    problems = []
    if trees:
        for vol in record.image.volumes:
            try:
                with mounted(restored, vol) as root:
                    found = diff_trees(vol.files, scan_tree(root, vol.fstype))
            except (OSError, RuntimeError) as exc:  # the mount tools' failures
                found = [f"cannot mount: {exc}"]
            problems += [f"{vol.name}: {p}" for p in found]
    return RestoreCheck(wrong, problems, blocks)


def _block_lengths(
    path: Path, digests: Sequence[bytes | None], block_size: int
) -> dict[bytes, int]:
    size = path.stat().st_size
    return {
        d: min(block_size, size - i * block_size) for i, d in enumerate(digests) if d is not None
    }


def expected_kept(days: Iterable[int], daily: int, weekly: int, monthly: int) -> set[int]:
    """The oracle of GFS retention over simulated days (one backup a day): the newest backup
    of each of the newest `daily` days, `weekly` ISO weeks and `monthly` months that hold
    backups. Written from the rule, not from vmaccel.catalog.retention; only the period labels
    (UTC date, ISO week, month) are shared."""
    newest_first = sorted(days, reverse=True)
    kept: set[int] = set()
    for rule, count in (("daily", daily), ("weekly", weekly), ("monthly", monthly)):
        labels: list[str] = []
        for day in newest_first:
            label = PERIODS[rule](EPOCH + timedelta(days=day))
            if label not in labels:
                if len(labels) == count:
                    break
                labels.append(label)
                kept.add(day)
    return kept

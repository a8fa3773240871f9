"""Walking a volume's file tree for the file catalog: whole, or from the parent's listing.

:func:`walk` lists every directory. :func:`delta_walk` gives the same records for a volume
that a backup changed, reading only the metadata in changed blocks: a directory whose record
and entry blocks are unchanged keeps the parent's entries (each entry's own record is checked:
a changed one is read again), and only directories that changed are listed again. What it
relies on is in :mod:`vmaccel.guestfs.placement`; where a filesystem cannot say where a
directory's entries are, that directory is listed again, which is always correct.

Equal output is the contract: for the same volume, ``sorted(delta_walk(...))`` equals
``sorted(walk(fs))`` (tests compare them on filesystems changed through the kernel).
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from vmaccel.catalog.filecatalog import FileRecord
from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.extent import Extent
from vmaccel.guestfs.filesystem import FileStat, FileSystem
from vmaccel.guestfs.placement import Placement, Range
from vmaccel.guestfs.volume import Volume

logger = logging.getLogger(__name__)

MAX_FILES = 5_000_000  # a guard against hostile filesystems with endless directory loops
UNSTABLE_INODES = frozenset({"vfat"})  # fstypes whose inode numbers do not follow a file
Touched = Callable[[Range], bool]  # whether a volume byte range changed since the parent


def _join(parent: str, name: str) -> str:
    return f"{parent.rstrip('/')}/{name}"


def _record(path: str, st: FileStat, stable: bool) -> FileRecord:
    return FileRecord(path, st.kind, st.size, st.mtime_ns, st.inode if stable else None, st.mode)


class _Counter:
    def __init__(self) -> None:
        self.seen = 0

    def add(self) -> None:
        self.seen += 1
        if self.seen > MAX_FILES:
            raise GuestFsError(f"more than {MAX_FILES} files: refusing to index further")


def walk(fs: FileSystem, top: str = "/", counter: _Counter | None = None) -> Iterator[FileRecord]:
    """Every entry below ``top`` (depth first); unreadable entries are skipped. Inodes are
    kept where they identify a file across renames (not on FAT, whose numbers are directory
    entry offsets: a renamed FAT file is a removed one plus an added one)."""
    stable = fs.fstype not in UNSTABLE_INODES
    counter = counter or _Counter()
    stack = [top]
    while stack:
        parent = stack.pop()
        try:
            entries = fs.listdir(parent)
        except GuestFsError as exc:
            logger.warning("cannot list %s: %s", parent, exc)
            continue
        for st in entries:
            if st.error is not None:
                continue
            counter.add()
            path = _join(parent, st.name)
            yield _record(path, st, stable)
            if st.kind == "dir":
                stack.append(path)


def volume_touch(volume: Volume, block_size: int, changed: Sequence[int]) -> Touched:
    """:data:`Touched` for ``volume`` from the disk blocks (of ``block_size`` bytes) that
    changed, ascending. Bytes of the volume that are not on this disk count as changed."""
    segments = [(s.volume_offset, s.disk_offset, s.length) for s in volume.segments]

    def blocks_changed(disk_offset: int, length: int) -> bool:
        first, last = disk_offset // block_size, (disk_offset + length - 1) // block_size
        at = bisect_left(changed, first)
        return at < len(changed) and changed[at] <= last

    def touched(span: Range) -> bool:
        offset, length = span
        for vol_at, disk_at, seg_length in segments:  # the common case: inside one segment
            if vol_at <= offset and offset + length <= vol_at + seg_length:
                return blocks_changed(disk_at + offset - vol_at, length)
        on_disk = volume.to_disk([Extent(offset, length)])
        if sum(e.length for e in on_disk) < length:
            return True
        return any(blocks_changed(e.offset, e.length) for e in on_disk)

    return touched


@dataclass
class DeltaCounts:
    """What a delta walk did: directories listed again, entries whose record was read again,
    entries taken from the parent's listing as they were."""

    listed: int = 0
    restated: int = 0
    kept: int = 0


def delta_walk(
    fs: FileSystem,
    placement: Placement,
    prior: Sequence[FileRecord],
    touched: Touched,
    counts: DeltaCounts | None = None,
) -> Iterator[FileRecord]:
    """The records :func:`walk` gives for ``fs``, from ``prior`` (the parent state's full
    listing, every record with its inode) and the changed byte ranges. The caller checks
    that ``placement.layout()`` equals the parent state's (records at the same bytes)."""
    counts = counts if counts is not None else DeltaCounts()
    below: dict[str, list[FileRecord]] = defaultdict(list)
    for r in prior:
        below[r.path.rsplit("/", 1)[0] or "/"].append(r)
    walker = _Delta(fs, placement, below, touched, counts)
    yield from walker.directory("/", fs.stat("/").inode)


class _Delta:
    def __init__(
        self,
        fs: FileSystem,
        placement: Placement,
        below: dict[str, list[FileRecord]],
        touched: Touched,
        counts: DeltaCounts,
    ) -> None:
        self.fs, self.placement, self.below = fs, placement, below
        self.touched, self.counts, self.counter = touched, counts, _Counter()

    def changed(self, inode: int) -> bool:
        return self.touched(self.placement.record(inode))

    def entries_changed(self, inode: int) -> bool:
        if self.changed(inode):
            return True
        ranges = self.placement.entries(inode)
        return ranges is None or any(self.touched(r) for r in ranges)

    def directory(self, path: str, inode: int) -> Iterator[FileRecord]:
        """The records below directory ``path`` (same inode as in the parent state)."""
        stack = [(path, inode)]
        while stack:
            path, inode = stack.pop()
            try:
                relist = self.entries_changed(inode)
            except GuestFsError as exc:
                logger.warning("cannot place %s: %s", path, exc)
                relist = True
            step = self._listed(path) if relist else self._kept(path)
            for rec, old in step:
                self.counter.add()
                yield rec
                if rec.kind != "dir":
                    continue
                if old is not None and old.kind == "dir" and rec.inode == old.inode is not None:
                    stack.append((rec.path, old.inode))
                else:  # a new or renamed directory: nothing of it can be reused
                    yield from walk(self.fs, rec.path, self.counter)

    def _listed(self, path: str) -> Iterator[tuple[FileRecord, FileRecord | None]]:
        """The directory's entries read again, each with its record in the parent state."""
        self.counts.listed += 1
        old = {r.path: r for r in self.below.get(path, ())}
        try:
            entries = self.fs.listdir(path)
        except GuestFsError as exc:
            logger.warning("cannot list %s: %s", path, exc)
            return
        for st in entries:
            if st.error is None:
                child = _join(path, st.name)
                yield _record(child, st, True), old.get(child)

    def _kept(self, path: str) -> Iterator[tuple[FileRecord, FileRecord | None]]:
        """The parent state's entries; those whose own record changed are read again."""
        for old in self.below.get(path, ()):
            assert old.inode is not None  # noqa: S101 - delta walks need inodes (caller checks)
            if not self.changed(old.inode):
                self.counts.kept += 1
                yield old, old
                continue
            self.counts.restated += 1
            try:
                st = self.fs.stat(old.path)
            except GuestFsError as exc:  # as walk does for an entry it cannot stat
                logger.warning("%s: %s", self.fs.fstype, exc)
                continue
            yield _record(old.path, st, True), old

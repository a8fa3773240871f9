"""The corruption matrix's machinery: a copy-on-write disk, the coverage oracle, one case's run.

A case is one `Mutation` (a few patched byte ranges) of one `Target` (a filesystem in a pristine
image file). It never copies the image: `PatchedDisk` presents a small virtual disk, an MBR with
one partition at byte `HEADER`, followed by the target's partition read straight from the image
file with `os.pread`, with the mutation's patches laid over the bytes on every read. The
allocation map under test only ever calls ``seek``/``tell``/``readinto`` on its disk, which is
what a `io.RawIOBase` gives. Mapping one filesystem behind a one-entry MBR (instead of the whole
multi-volume image) keeps a case to one parser's work, and the real partition-table path still
runs, so a damaged boot sector makes the volume unrecognised (taken whole), as it would on the
guest's disk, rather than a bare disk that no longer looks like anything.

The oracle (`Truth`) is computed once per target from the pristine image, without any parser of
the product: the sectors that hold file data (found by content) and the metadata the filesystem
needs to stay readable (found by signature scans and the filesystems' own tools). A case passes
when every such byte is in the allocation map, whether the volume was taken whole or not. An
uncovered byte fails it, and so do a crash (any exception but a `GuestFsError` for a damaged
layout), a map slower than `CASE_TIMEOUT` seconds and a hang (stopped at five times that).
"""

from __future__ import annotations

import io
import os
import random
import signal
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from vmaccel.guestfs.allocation import AllocationMap, build_allocation_map
from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.extent import Extent, complement, intersect, merge, total

HEADER = 1 << 20  # the partition starts at LBA 2048, as partitioning tools put it
CASE_TIMEOUT = float(os.environ.get("VMACCEL_CORRUPTION_CASE_TIMEOUT", "1.0"))


@dataclass(frozen=True)
class Patch:
    """Replace `len(data)` bytes at filesystem byte `offset` (see `Target.fs_segments`)."""

    offset: int
    data: bytes


@dataclass(frozen=True)
class Mutation:
    """One generated corruption. `kind` groups cases for the failure counts (e.g.
    "bitmap-zero"); `detail` says exactly what was changed, for the failure message.
    `partition_level` patches are in partition offsets (LVM label and metadata), not
    filesystem offsets; for those a `GuestFsError` from the map is an accepted answer, since
    the layout itself is damaged and the backup refuses rather than guesses."""

    kind: str
    detail: str
    patches: tuple[Patch, ...]
    partition_level: bool = False


@dataclass(frozen=True)
class Target:
    """A filesystem to corrupt: its partition is `size` bytes at byte `base` of `image`.

    `fs_segments` are ``(fs offset, partition offset, length)`` triples placing the
    filesystem inside its partition: one identity triple for a plain partition, an LV's
    segments inside its PV otherwise. `volume` is the name the allocation map gives the
    filesystem's volume (``"p1"``, or the LV name, with `pv` the PV's)."""

    name: str
    fstype: str
    image: Path
    base: int
    size: int
    mbr_type: int
    fs_segments: tuple[tuple[int, int, int], ...]
    volume: str = "p1"
    pv: str | None = None  # for an LV: the PV's volume name, taken whole when LVM is refused

    @property
    def header(self) -> int:
        """Where the partition starts on the virtual disk: after a synthetic MBR, or at 0
        when `mbr_type` is 0 and the target is the image itself (`base` 0, `size` all)."""
        return HEADER if self.mbr_type else 0

    @property
    def fs_size(self) -> int:
        return sum(length for _f, _p, length in self.fs_segments)

    def to_partition(self, offset: int, length: int) -> list[tuple[int, int, int]]:
        """Split filesystem bytes [offset, offset+length) into (partition offset, length,
        offset into the range) pieces."""
        out = []
        for fs_off, part_off, seg_len in self.fs_segments:
            lo, hi = max(offset, fs_off), min(offset + length, fs_off + seg_len)
            if lo < hi:
                out.append((part_off + lo - fs_off, hi - lo, lo - offset))
        return out

    def to_disk(self, extents: Sequence[Extent]) -> tuple[Extent, ...]:
        """Filesystem extents as extents of the virtual disk `PatchedDisk` presents."""
        return merge(
            Extent(self.header + p, n)
            for e in extents
            for p, n, _ in self.to_partition(e.offset, e.length)
        )

    def read_fs(self, offset: int, length: int) -> bytes:
        """Pristine filesystem bytes [offset, offset+length)."""
        out = bytearray(length)
        with open(self.image, "rb") as f:
            for part_off, n, at in self.to_partition(offset, length):
                f.seek(self.base + part_off)
                out[at : at + n] = f.read(n)
        return bytes(out)


@dataclass(frozen=True)
class Truth:
    """What must survive, in filesystem offsets (normalized): `data` holds file contents,
    `metadata` the structures needed to read them; `owners` names the file of each data
    extent for messages; `notes` says how each part was found. `partition_metadata` is in
    partition offsets: an LVM PV's label and metadata area."""

    data: tuple[Extent, ...]
    metadata: tuple[Extent, ...]
    owners: tuple[tuple[Extent, str], ...] = ()
    notes: tuple[str, ...] = ()
    partition_metadata: tuple[Extent, ...] = field(default=())

    def owner(self, offset: int) -> str:
        return next((name for e, name in self.owners if e.offset <= offset < e.end), "?")


class PatchedDisk(io.RawIOBase):
    """A read-only virtual disk: a one-entry MBR, then the target's partition from the image
    file, with `patches` (partition offsets) applied. Holds no copy of the image; `os.pread`
    makes it independent of any other handle's position. Close it to release the file."""

    def __init__(self, target: Target, patches: Sequence[tuple[int, bytes]]) -> None:
        super().__init__()
        self._target = target
        self._fd = os.open(target.image, os.O_RDONLY)
        self._patches = sorted(patches)
        self._header = target.header
        self._size = self._header + target.size
        self._pos = 0
        mbr = bytearray(512)
        struct.pack_into(
            "<B3xB3xII", mbr, 446, 0, target.mbr_type, HEADER // 512, target.size // 512
        )
        mbr[510:512] = b"\x55\xaa"
        self._mbr = bytes(mbr)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        out = memoryview(buffer).cast("B")
        pos, n = self._pos, max(0, min(len(out), self._size - self._pos))
        header = self._header
        if pos < header:
            head = min(n, header - pos)
            out[:head] = bytes(head)
            if pos < 512:
                m = min(head, 512 - pos)
                out[:m] = self._mbr[pos : pos + m]
        if pos + n > header:
            lo = max(pos, header)
            view = out[lo - pos : n]
            got = os.preadv(self._fd, [view], self._target.base + lo - header)
            view[got:] = bytes(len(view) - got)
        for p_off, data in self._patches:
            d_lo, d_hi = header + p_off, header + p_off + len(data)
            lo, hi = max(pos, d_lo), min(pos + n, d_hi)
            if lo < hi:
                out[lo - pos : hi - pos] = data[lo - d_lo : hi - d_lo]
        self._pos += n
        return n


def partition_patches(target: Target, mutation: Mutation) -> list[tuple[int, bytes]]:
    """The mutation's patches in partition offsets."""
    if mutation.partition_level:
        return [(p.offset, p.data) for p in mutation.patches]
    out = []
    for p in mutation.patches:
        for part_off, n, at in target.to_partition(p.offset, len(p.data)):
            out.append((part_off, p.data[at : at + n]))
    return out


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one case: `failure` is None when it passed; `whole_reason` is set when
    the map took the volume whole; `seconds` is the wall time of the map."""

    target: str
    seed: int
    mutation: Mutation
    failure: str | None
    whole_reason: str | None
    seconds: float

    def message(self) -> str:
        return (
            f"seed={self.seed} fs={self.target} kind={self.mutation.kind}: "
            f"{self.mutation.detail} -> {self.failure}"
        )


class CaseTimeout(BaseException):
    """Raised by the alarm in a case that runs too long (a BaseException, so no parser's
    ``except`` clause can swallow it)."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise `CaseTimeout` in the main thread after `seconds` of wall time."""

    def on_alarm(_sig: int, _frame: FrameType | None) -> None:
        raise CaseTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    started = time.monotonic()
    # pytest-timeout may own the same timer: give back what was left of it afterwards.
    outer, _interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(1e-3, outer - (time.monotonic() - started)))


def run_case(target: Target, truth: Truth, seed: int, mutation: Mutation) -> CaseResult:
    """Map the mutated target and judge the map against `truth` (see the module docstring)."""
    disk = PatchedDisk(target, partition_patches(target, mutation))
    started = time.perf_counter()
    amap: AllocationMap | None = None
    failure: str | None = None
    try:
        with time_limit(CASE_TIMEOUT * 5):
            amap = build_allocation_map(disk)  # type: ignore[arg-type]
    except CaseTimeout:
        failure = f"hang: no answer within {CASE_TIMEOUT * 5:.1f} s"
    except GuestFsError as exc:
        if not mutation.partition_level:
            failure = f"crash: GuestFsError escaped for a filesystem-level change: {exc}"
    except Exception as exc:  # noqa: BLE001 - any other exception is the finding
        failure = f"crash: {type(exc).__name__}: {exc}"
    finally:
        disk.close()
    seconds = time.perf_counter() - started
    whole_reason = None
    if amap is not None:
        whole_reason = _whole_reason(amap, target)
        failure = uncovered(amap, target, truth)
    if failure is None and seconds > CASE_TIMEOUT:
        failure = f"slow: {seconds:.2f} s (limit {CASE_TIMEOUT} s)"
    return CaseResult(target.name, seed, mutation, failure, whole_reason, seconds)


def _whole_reason(amap: AllocationMap, target: Target) -> str | None:
    for rep in amap.volumes:
        if rep.volume.name in (target.volume, target.pv) and rep.whole_reason:
            return rep.whole_reason
    return None


def uncovered(amap: AllocationMap, target: Target, truth: Truth) -> str | None:
    """Describe the first required byte missing from the map, data before metadata."""
    free = complement(amap.used, amap.disk_size)
    for what, fs_extents in (("file data", truth.data), ("metadata", truth.metadata)):
        missing = intersect(target.to_disk(fs_extents), free)
        if missing:
            first = missing[0].offset
            fs_off = _fs_offset(target, first - target.header)
            owner = f" of {truth.owner(fs_off)!r}" if what == "file data" else ""
            return (
                f"uncovered {what}{owner} at fs byte {fs_off} (disk byte {first}); "
                f"{total(missing)} bytes of {what} missing in {len(missing)} extents"
            )
    part_missing = intersect(
        merge(Extent(target.header + e.offset, e.length) for e in truth.partition_metadata), free
    )
    if part_missing:
        first = part_missing[0].offset - target.header
        return f"uncovered partition metadata at partition byte {first}"
    return None


def _fs_offset(target: Target, part_off: int) -> int:
    for fs_off, p_off, length in target.fs_segments:
        if p_off <= part_off < p_off + length:
            return fs_off + part_off - p_off
    return -1


Kind = Callable[[random.Random], Mutation]


def nudge(rng: random.Random, value: int, bits: int) -> int:
    """A plausible wrong value for an unsigned `bits`-wide field that holds `value`."""
    mask = (1 << bits) - 1
    choice = rng.randrange(7)
    if choice == 0:
        new = value + rng.choice((-1, 1))
    elif choice == 1:
        new = value + rng.randint(-64, 64)
    elif choice == 2:
        new = value * 2
    elif choice == 3:
        new = value // 2
    elif choice == 4:
        new = value ^ (1 << rng.randrange(bits))
    elif choice == 5:
        new = 0
    else:
        new = rng.getrandbits(bits)
    new &= mask
    return new if new != value else value ^ 1


def field_patch(
    rng: random.Random, offset: int, raw: bytes, fmt: str, name: str
) -> tuple[Patch, str]:
    """Nudge the struct field `fmt` at `offset` (whose pristine bytes are `raw`)."""
    (value,) = struct.unpack(fmt, raw)
    new = nudge(rng, value, 8 * struct.calcsize(fmt))
    return Patch(offset, struct.pack(fmt, new)), f"{name} {value} -> {new}"


def pick_kind(kinds: dict[str, Kind], target: Target, seed: int) -> Mutation:
    """The mutation of case `seed`: a kind chosen uniformly, then built, both from
    ``random.Random(f"{target.name}/{seed}")`` so a seed alone reproduces the case. A draw
    that would change no byte (a 0xff fill over 0xff, a clamped record) is drawn again."""
    rng = random.Random(f"{target.name}/{seed}")
    for _attempt in range(20):
        mutation = kinds[rng.choice(sorted(kinds))](rng)
        if changes_something(target, mutation):
            return mutation
    raise AssertionError(f"{target.name} seed {seed}: 20 draws changed nothing")


def changes_something(target: Target, mutation: Mutation) -> bool:
    """Whether any patch differs from the pristine bytes it covers."""
    with open(target.image, "rb") as f:
        for off, data in partition_patches(target, mutation):
            f.seek(target.base + off)
            if f.read(len(data)) != data:
                return True
    return False

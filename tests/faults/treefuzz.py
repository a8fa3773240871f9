"""Fuzzing the file-tree parsers: generated metadata damage, a bounded walk, one case's verdict.

A case mutates a few bytes of one filesystem's metadata (the `Truth.metadata` extents the
corruption matrix located without any product parser: superblocks, inode tables, directory
blocks, MFT records, index blocks, FAT tables and directories, XFS inode chunks and btrees)
and then walks the whole tree through the `FileSystem` API: `listdir` of every directory,
`stat`, `readlink`, and `open` + `read` of every file. The parsers are driven two ways:

- `tree`: `open_filesystem` straight on the volume, without the verification gate of
  `browse_disk`. A hostile guest writes valid checksums over whatever it likes, so the parsers
  must survive metadata the gate would have passed.
- `browse`: `browse_disk`, the way the mount and the file catalog open a disk.

Allowed outcomes: the volume unbrowsable with a reason, an entry with `FileStat.error`, or a
`GuestFsError` from a call. Anything else fails the case: another exception (a crash), no
answer within `CASE_LIMIT` seconds (a hang), or more than `MEMORY_LIMIT` bytes allocated at
peak (a size field believed).
"""

from __future__ import annotations

import hashlib
import random
import time
import traceback
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tests.guestfs.corruption import (
    CaseTimeout,
    Mutation,
    Patch,
    PatchedDisk,
    Target,
    Truth,
    partition_patches,
    time_limit,
)
from vmaccel.guestfs.browse import browse_disk, open_filesystem
from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.filesystem import FileSystem
from vmaccel.guestfs.volume import Segment, Volume, VolumeKind, VolumeView

CASE_LIMIT = 5.0
MEMORY_LIMIT = 64 << 20
MAX_ENTRIES = 3000  # a walk stops after this many entries: a mutated tree may be huge
MAX_DEPTH = 24
READ_HEAD = 1 << 20  # bytes read from the start of each file, then 64 KiB at its end
READ_TAIL = 64 << 10
INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000)

Entry = tuple[str, str, int, str]  # path, kind, size, sha256 of the bytes read (or the error)


@dataclass(frozen=True)
class Walk:
    """What a bounded walk saw: one `Entry` per path, in walk order, and how many calls raised
    a `GuestFsError` (allowed) and what else was raised (a crash, the finding)."""

    entries: tuple[Entry, ...]
    errors: int
    crash: str | None


def walk(fs: FileSystem) -> Walk:
    """List, stat and read the whole tree of `fs`, bounded (see the module constants).

    Directories are entered once per inode, so a directory cycle made by damage ends."""
    entries: list[Entry] = []
    errors = 0
    seen: set[int] = set()
    todo: list[tuple[str, int]] = [("/", 0)]
    try:
        while todo and len(entries) < MAX_ENTRIES:
            path, depth = todo.pop()
            try:
                listing = fs.listdir(path)
            except GuestFsError as exc:
                errors += 1
                entries.append((path, "dir", 0, f"error: {exc}"))
                continue
            for st in listing:
                child = f"{path.rstrip('/')}/{st.name}"
                if st.error is not None:
                    errors += 1
                    entries.append((child, "other", 0, f"error: {st.error}"))
                elif st.kind == "dir":
                    entries.append((child, "dir", 0, ""))
                    if depth < MAX_DEPTH and st.inode not in seen:
                        seen.add(st.inode)
                        todo.append((child, depth + 1))
                else:
                    digest, failed = _visit(fs, child, st.kind)
                    errors += failed
                    entries.append((child, st.kind, st.size, digest))
    except GuestFsError as exc:  # the API may refuse anywhere; a crash is anything else
        errors += 1
        entries.append(("?", "other", 0, f"error: {exc}"))
    except (CaseTimeout, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - any other exception is the finding
        return Walk(tuple(entries), errors, f"{type(exc).__name__}: {exc} at {_where(exc)}")
    return Walk(tuple(entries), errors, None)


def _where(exc: BaseException) -> str:
    """The innermost frames of `exc`'s traceback (file:line), to find the parser at fault."""
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    return " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames))


def _visit(fs: FileSystem, path: str, kind: str) -> tuple[str, int]:
    """(sha256 of what was read, or the error; 1 if a GuestFsError was raised)."""
    try:
        fs.stat(path)
        if kind == "symlink":
            return f"-> {fs.readlink(path)}", 0
        if kind != "file":
            return "", 0
        with fs.open(path) as f:
            digest = hashlib.sha256(f.read(READ_HEAD))
            size = f.seek(0, 2)
            if size > READ_HEAD:
                f.seek(max(READ_HEAD, size - READ_TAIL))
                digest.update(f.read(READ_TAIL))
        return digest.hexdigest(), 0
    except GuestFsError as exc:
        return f"error: {exc}", 1


@dataclass(frozen=True)
class Verdict:
    """One case's result: `failure` is None when the outcome was an allowed one."""

    target: str
    seed: int
    mode: str
    mutation: Mutation
    failure: str | None
    unbrowsable: bool
    errors: int
    seconds: float
    peak: int

    def message(self) -> str:
        return (
            f"seed={self.seed} fs={self.target} mode={self.mode} kind={self.mutation.kind}: "
            f"{self.mutation.detail} -> {self.failure}"
        )


def target_volume(target: Target) -> Volume:
    """The filesystem's volume on the `PatchedDisk` of `target` (LV segments included)."""
    segs = tuple(
        Segment(fs_off, target.header + part_off, n) for fs_off, part_off, n in target.fs_segments
    )
    return Volume(target.volume, VolumeKind.PARTITION, target.fs_size, segs, target.fstype)


def judge(target: Target, seed: int, mode: str, mutation: Mutation) -> Verdict:
    """Run one case in `mode` ("tree" or "browse") under the time and memory limits."""
    disk = PatchedDisk(target, partition_patches(target, mutation))
    run = tree_runner(target) if mode == "tree" else _browse
    failure: str | None = None
    unbrowsable, errors = False, 0
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    try:
        with time_limit(CASE_LIMIT):
            unbrowsable, result = run(disk)  # type: ignore[arg-type]
        errors = result.errors
        failure = f"crash: {result.crash}" if result.crash else None
    except CaseTimeout:
        failure = f"hang: no answer within {CASE_LIMIT} s"
    except MemoryError:
        failure = "memory: MemoryError"
    except Exception as exc:  # noqa: BLE001 - any other exception is the finding
        failure = f"crash: {type(exc).__name__}: {exc}"
    finally:
        disk.close()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] - base
    if failure is None and peak > MEMORY_LIMIT:
        failure = f"memory: {peak >> 20} MiB allocated at peak (limit {MEMORY_LIMIT >> 20})"
    return Verdict(target.name, seed, mode, mutation, failure, unbrowsable, errors, seconds, peak)


def tree_runner(target: Target) -> Callable[[BinaryIO], tuple[bool, Walk]]:
    """Open the target's filesystem directly (no verification gate) and walk it."""
    volume = target_volume(target)

    def run(disk: BinaryIO) -> tuple[bool, Walk]:
        try:
            fs = open_filesystem(VolumeView(disk, volume))
        except GuestFsError:
            return True, Walk((), 0, None)
        return False, walk(fs)

    return run


def _browse(disk: BinaryIO) -> tuple[bool, Walk]:
    """browse_disk, then walk every browsable volume (all of them, to judge crashes)."""
    unbrowsable = False
    entries: list[Entry] = []
    errors = 0
    for vol in browse_disk(disk):
        if vol.filesystem is None:
            unbrowsable = unbrowsable or vol.fstype not in (None, "lvm2", "swap")
            continue
        result = walk(vol.filesystem)
        if result.crash:
            return unbrowsable, result
        entries.extend(result.entries)
        errors += result.errors
    return unbrowsable, Walk(tuple(entries), errors, None)


def mutate(rng: random.Random, target: Target, truth: Truth) -> Mutation:
    """One generated mutation of the target's metadata (see `KINDS`)."""
    extent = rng.choice(truth.metadata)
    lo, n = extent.offset, extent.length
    if rng.random() < 0.8:  # aim at live structures: a non-zero byte and the 512 around it
        window = min(n, 1 << 16)
        start = lo + rng.randrange(n - window + 1)
        data = target.read_fs(start, window)
        live = [i for i in range(0, window, 8) if data[i : i + 8].strip(b"\0")]
        if live:
            at = start + rng.choice(live)
            lo = max(extent.offset, at - 256)
            n = min(extent.end, at + 256) - lo
    kind = rng.choice(sorted(KINDS))
    return KINDS[kind](rng, target, lo, n)


def _flip(rng: random.Random, target: Target, lo: int, n: int) -> Mutation:
    off = lo + rng.randrange(n)
    count = rng.randint(1, 4)
    old = target.read_fs(off, count)
    new = bytes(b ^ (1 << rng.randrange(8)) for b in old)
    return Mutation("flip", f"xor bits of {count} bytes at fs byte {off}", (Patch(off, new),))


def _field(rng: random.Random, target: Target, lo: int, n: int) -> Mutation:
    width = rng.choice((1, 2, 4, 8))
    off = lo + rng.randrange(max(1, n - width + 1)) // width * width
    value = rng.choice((*INTERESTING, (1 << 8 * width) - 1, rng.getrandbits(8 * width)))
    old = int.from_bytes(target.read_fs(off, width), "little")
    if rng.random() < 0.3:
        value = old + rng.choice((-1, 1, -16, 16, 4096)) if old else value
    new = (value % (1 << 8 * width)).to_bytes(width, "little")
    return Mutation("field", f"u{8 * width} at fs byte {off}: {old} -> {value}", (Patch(off, new),))


def _copy(rng: random.Random, target: Target, lo: int, n: int) -> Mutation:
    length = rng.choice((16, 64, 512))
    src = lo + rng.randrange(max(1, n - length + 1))
    dst = lo + rng.randrange(max(1, n - length + 1))
    data = target.read_fs(src, length)
    return Mutation("copy", f"{length} bytes from fs byte {src} to {dst}", (Patch(dst, data),))


def _fill(rng: random.Random, target: Target, lo: int, n: int) -> Mutation:
    length = rng.choice((8, 32, 128, 512))
    off = lo + rng.randrange(max(1, n - length + 1))
    byte = rng.choice((0, 0xFF, None))
    data = rng.randbytes(length) if byte is None else bytes([byte]) * length
    what = "random" if byte is None else f"0x{byte:02x}"
    return Mutation("fill", f"{length} {what} bytes at fs byte {off}", (Patch(off, data),))


def _multi(rng: random.Random, target: Target, lo: int, n: int) -> Mutation:
    parts = [_field(rng, target, lo, n) for _ in range(rng.randint(2, 6))]
    patches = tuple(p for m in parts for p in m.patches)
    return Mutation("multi", "; ".join(m.detail for m in parts), patches)


KINDS: dict[str, Callable[[random.Random, Target, int, int], Mutation]] = {
    "flip": _flip,
    "field": _field,
    "copy": _copy,
    "fill": _fill,
    "multi": _multi,
}


def whole_disk(target: Target, disk_size: int) -> Target:
    """The same filesystem as `target`, seen on its whole image (every other volume too)."""
    segs = tuple((f, target.base + p, n) for f, p, n in target.fs_segments)
    return Target(
        target.name, target.fstype, target.image, 0, disk_size, 0, segs, target.volume, target.pv
    )


def browse_all(target: Target, mutation: Mutation) -> dict[str, Walk | str]:
    """Every volume of the target's disk with `mutation` applied: its walk, or the reason it
    is unbrowsable (what the mount shows under that volume's files/)."""
    out: dict[str, Walk | str] = {}
    with PatchedDisk(target, partition_patches(target, mutation)) as disk, time_limit(60):
        for vol in browse_disk(disk):  # type: ignore[arg-type]
            out[vol.name] = walk(vol.filesystem) if vol.filesystem else f"reason: {vol.reason}"
    return out

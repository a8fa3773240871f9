"""verify: check a repository and name exactly what is damaged and what depends on it.

Quick (the default) checks the catalog against the packs and manifests without reading data:

- every pack row's file exists with the recorded size and a header of this repository;
- each pack's trailing index agrees with the chunk rows pointing into it (offset, lengths,
  kind, flags, crc), and every chunk row points inside its pack;
- every complete image's map tree: each node is read and verified (nodes are small), shared
  subtrees once; every chunk id a leaf names has a data chunk row;
- every complete backup has a readable manifest that agrees with the index.

Full (``full=True``) also re-reads every chunk in pack order on ``workers`` threads, checks its
payload crc and decodes it through the codec (decompress, decrypt, re-hash). Memory stays
bounded: one read segment (at most ``SEGMENT_BYTES``) per worker.

Damage is attributed to what depends on it (see :mod:`vmaccel.catalog.damage`): a damaged data chunk
makes the blocks mapped to it unreadable, a damaged map node the whole range it covers. The
report lists, per damaged chunk and per image, the backups, VMs, disks and merged byte ranges.
Packs that no row names are reported as info (garbage for gc), not as damage.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from vmaccel.catalog.blockmap import HOLE
from vmaccel.catalog.damage import AffectedImage, ByteRange, Dependent, attribute
from vmaccel.catalog.index import BackupRow, ChunkLocation, ImageRow, PackRow
from vmaccel.catalog.pack import (
    ENTRY_HEADER_SIZE,
    HEADER_SIZE,
    KIND_DATA,
    KIND_NODE,
    ReadRange,
    check_header,
    read_index,
)
from vmaccel.vocabulary.errors import ChunkMissing, DamageError

if TYPE_CHECKING:
    from vmaccel.catalog.repository import Repository

logger = logging.getLogger(__name__)

SEGMENT_BYTES = 8 * 1024 * 1024  # one read of consecutive chunks in a full verify
_KIND_NAMES = {KIND_DATA: "data", KIND_NODE: "node"}


@dataclass(frozen=True)
class DamagedChunk:
    """A chunk that is missing or fails a check. ``id`` is the full hex id; ``pack`` and
    ``offset`` (payload offset in bytes) say where it is or should be, when known."""

    id: str
    kind: str
    pack: str | None
    offset: int | None
    reason: str
    used_by: tuple[Dependent, ...] = ()


@dataclass(frozen=True)
class Finding:
    """Something wrong (or worth knowing) that is not one chunk: ``subject`` is ``pack``,
    ``manifest`` or ``index``; ``name`` the pack name or backup uuid."""

    subject: str
    name: str
    reason: str


@dataclass(frozen=True)
class VerifyReport:
    full: bool
    packs: int
    chunks: int
    nodes: int
    chunks_read: int
    bytes_read: int
    backups: int
    images: int
    damaged: tuple[DamagedChunk, ...]
    affected: tuple[AffectedImage, ...]
    problems: tuple[Finding, ...]
    info: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        """True when nothing is damaged (``info`` findings do not count)."""
        return not self.damaged and not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> list[str]:
        mode = "full" if self.full else "quick"
        lines = [
            f"verify ({mode}): {self.packs} packs, {self.chunks} chunk rows, {self.nodes} map "
            f"nodes, {self.backups} backups, {self.images} images"
            + (f", {self.chunks_read} chunks re-read" if self.full else "")
        ]
        for c in self.damaged:
            where = f"pack {c.pack} at {c.offset}" if c.pack else "no pack"
            users = f"; needed by {len(c.used_by)} images" if c.used_by else ""
            lines.append(f"DAMAGED {c.kind} chunk {c.id} ({where}): {c.reason}{users}")
        for a in self.affected:
            lines.append(
                f"affected: backup {a.backup_id} ({a.backup_uuid}) {a.vm}/{a.disk}: "
                f"{_ranges(a.ranges)}"
            )
        lines += [f"PROBLEM {p.subject} {p.name}: {p.reason}" for p in self.problems]
        lines += [f"info: {p.subject} {p.name}: {p.reason}" for p in self.info]
        lines.append("ok: no damage found" if self.ok else "NOT OK: the repository is damaged")
        return lines


def _ranges(ranges: Sequence[ByteRange], shown: int = 8) -> str:
    """Human form of byte ranges, the first ``shown`` of them (the JSON report has all)."""
    text = ", ".join(f"bytes {r.offset}+{r.length}" for r in ranges[:shown])
    return text + (f" (+{len(ranges) - shown} more ranges)" if len(ranges) > shown else "")


class _Findings:
    """What a verify run found so far (first reason for a chunk wins)."""

    def __init__(self) -> None:
        self.damaged: dict[bytes, tuple[int, str | None, int | None, str]] = {}
        self.problems: list[Finding] = []
        self.info: list[Finding] = []
        self.missing_packs: set[str] = set()

    def chunk(self, cid: bytes, kind: int, pack: str | None, offset: int | None, why: str) -> None:
        if cid not in self.damaged:
            logger.debug("chunk %s: %s", cid.hex(), why)
            self.damaged[cid] = (kind, pack, offset, why)

    def located(self, loc: ChunkLocation, why: str) -> None:
        self.chunk(loc.id, loc.kind, loc.pack, loc.offset, why)


def verify(repo: Repository, full: bool = False, workers: int = 2) -> VerifyReport:
    """Check ``repo`` (see the module docstring). Never modifies the repository.

    Raises only for errors that stop the check itself (e.g. an unreadable index); damage is
    reported, not raised.
    """
    found = _Findings()
    packs = repo.index.packs()
    chunk_rows = sum(_check_pack(repo, p, found) for p in packs)
    _check_orphans(repo, packs, found)
    backups = repo.backups()
    images = [(b, img) for b in backups for img in repo.images(b)]
    walker = _MapCheck(repo, found)
    for _, img in images:
        walker.image(img)
    _locate_missing(repo, walker.missing, found)
    _check_manifests(repo, backups, images, found)
    read = (0, 0)
    if full:
        read = _read_all(repo, packs, workers, found)
    used_by, affected = attribute(repo, images, set(found.damaged))
    damaged = tuple(
        DamagedChunk(
            cid.hex(), _KIND_NAMES.get(kind, str(kind)), pack, off, why, used_by.get(cid, ())
        )
        for cid, (kind, pack, off, why) in sorted(
            found.damaged.items(), key=lambda kv: (kv[1][1] or "", kv[1][2] or 0, kv[0])
        )
    )
    report = VerifyReport(
        full=full,
        packs=len(packs),
        chunks=chunk_rows,
        nodes=len(walker.seen),
        chunks_read=read[0],
        bytes_read=read[1],
        backups=len(backups),
        images=len(images),
        damaged=damaged,
        affected=affected,
        problems=tuple(found.problems),
        info=tuple(found.info),
    )
    logger.info("verify done: %s", "ok" if report.ok else "DAMAGED")
    return report


# -- packs --------------------------------------------------------------------------------------


def _check_pack(repo: Repository, pack: PackRow, found: _Findings) -> int:
    """Check one pack row against its file and trailer; returns the chunk rows checked."""
    rows = repo.index.chunks_in_pack(pack.id)
    try:
        size = repo.packs.size(pack.name)
    except ChunkMissing as exc:
        found.problems.append(Finding("pack", pack.name, str(exc)))
        found.missing_packs.add(pack.name)
        for loc in rows:
            found.located(loc, f"pack {pack.name} is missing")
        return len(rows)
    head = repo.packs.read(pack.name, 0, min(size, HEADER_SIZE))
    try:
        check_header(head, repo.config.repo_id, pack.name)
    except DamageError as exc:
        found.problems.append(Finding("pack", pack.name, str(exc)))
    if size != pack.size:
        found.problems.append(
            Finding("pack", pack.name, f"is {size} bytes, the index says {pack.size}")
        )
    trailer = None
    try:
        trailer = {e.id: e for e in read_index(_reader(repo, pack.name), size, pack.name)}
    except DamageError as exc:
        found.problems.append(Finding("pack", pack.name, str(exc)))
    for loc in rows:
        if loc.offset < HEADER_SIZE + ENTRY_HEADER_SIZE or loc.offset + loc.stored_len > size:
            found.located(loc, f"points outside its pack ({size} bytes; truncated?)")
        elif trailer is not None:
            _compare_entry(loc, trailer, found)
    return len(rows)


def _compare_entry(loc: ChunkLocation, trailer: dict[bytes, Any], found: _Findings) -> None:
    e = trailer.get(loc.id)
    if e is None:
        found.located(loc, "is not in its pack's trailer index")
        return
    ours = (loc.offset, loc.stored_len, loc.raw_len, loc.kind, loc.flags, loc.crc)
    theirs = (e.offset, e.stored_len, e.raw_len, e.kind, e.flags, e.crc)
    if ours != theirs:
        found.located(
            loc,
            "index row (offset, stored, raw, kind, flags, crc) "
            f"{ours} disagrees with the pack trailer {theirs}",
        )


def _reader(repo: Repository, name: str) -> ReadRange:
    return lambda offset, length: repo.packs.read(name, offset, length)


def _check_orphans(repo: Repository, packs: list[PackRow], found: _Findings) -> None:
    known = {p.name for p in packs}
    for name in repo.packs.names():
        if name not in known:
            why = (
                "no index row names it (garbage for gc, or lost by the index: "
                "`vmaccel repo rebuild-index` would re-add it)"
            )
            found.info.append(Finding("pack", name, why))
    for name in repo.packs.temporary_names():
        found.info.append(Finding("pack", f"tmp/{name}", "left by an interrupted writer"))


def _locate_missing(repo: Repository, missing: dict[bytes, str], found: _Findings) -> None:
    """Record chunks a map names but the index lacks, with where a pack still holds them."""
    where: dict[bytes, tuple[str, int]] = {}
    if missing:  # rare: only then re-read the (small) trailers of every pack
        for name in repo.packs.names():
            try:
                entries = read_index(_reader(repo, name), repo.packs.size(name), name)
            except DamageError:
                continue
            where.update({e.id: (name, e.offset) for e in entries if e.id in missing})
    for cid, why in missing.items():
        pack, off = where.get(cid, (None, None))
        hint = f" (pack {pack} still holds it: rebuild-index can recover it)" if pack else ""
        found.chunk(cid, KIND_DATA, pack, off, why + hint)


# -- maps -----------------------------------------------------------------------------------------


class _MapCheck:
    """Walks every image's map once per unique node; checks nodes and leaf references."""

    def __init__(self, repo: Repository, found: _Findings) -> None:
        self.repo, self.found = repo, found
        self.seen: set[bytes] = set()
        self.missing: dict[bytes, str] = {}

    def image(self, img: ImageRow) -> None:
        if img.root is not None:
            self._visit(img.root, img.depth - 1, img.fanout)

    def _visit(self, node_id: bytes, level: int, fanout: int) -> None:
        if node_id in self.seen:
            return
        self.seen.add(node_id)
        try:
            lvl, entries = self.repo.blockmap.node(node_id, fanout)
        except DamageError as exc:
            self._node_damage(node_id, f"map node (level {level}): {exc}")
            return
        if lvl != level:
            self._node_damage(node_id, f"map node is at level {lvl}, expected {level}")
            return
        children = [e for e in entries if e != HOLE]
        if level > 0:
            for child in children:
                self._visit(child, level - 1, fanout)
            return
        kinds = self.repo.index.chunk_kinds(children)
        for cid in children:
            if cid not in kinds:
                self.missing[cid] = "a map names it but it is not in the index"
            elif kinds[cid] != KIND_DATA:
                self.missing[cid] = "a map names it as data but the index has a map node"

    def _node_damage(self, node_id: bytes, why: str) -> None:
        loc = self.repo.index.chunk(node_id)
        if loc is None:
            self.found.chunk(node_id, KIND_NODE, None, None, why)
        else:
            self.found.located(loc, why)


# -- manifests ------------------------------------------------------------------------------------


def _check_manifests(
    repo: Repository,
    backups: list[BackupRow],
    images: list[tuple[BackupRow, ImageRow]],
    found: _Findings,
) -> None:
    names = set(repo.manifest_names())
    roots: dict[int, dict[str, str | None]] = {b.id: {} for b in backups}
    for b, img in images:
        roots[b.id][img.disk] = img.root.hex() if img.root else None
    for b in backups:
        if b.uuid not in names:
            why = f"backup {b.id} of {b.vm} has no manifest: rebuild-index could not restore it"
            found.problems.append(Finding("manifest", b.uuid, why))
            continue
        try:
            doc = repo.read_manifest(b.uuid)
        except DamageError as exc:
            found.problems.append(Finding("manifest", b.uuid, f"backup {b.id} of {b.vm}: {exc}"))
            continue
        theirs = {i.get("disk"): i.get("root") for i in doc.get("images", [])}
        if doc.get("backup", {}).get("uuid") != b.uuid or theirs != roots[b.id]:
            why = f"backup {b.id} of {b.vm}: the manifest disagrees with the index"
            found.problems.append(Finding("manifest", b.uuid, why))
    complete = {b.uuid for b in backups}
    for name in sorted(names - complete):
        if repo.index.backup_by_uuid(name) is None:
            why = "a manifest names this backup but the index has no row for it (rebuild-index)"
            found.problems.append(Finding("index", name, why))
        else:
            found.info.append(Finding("manifest", name, "belongs to a backup that is not complete"))


# -- full read ------------------------------------------------------------------------------------


def _read_all(
    repo: Repository, packs: list[PackRow], workers: int, found: _Findings
) -> tuple[int, int]:
    """Re-read and decode every chunk, packs in parallel; returns (chunks, bytes) read."""
    todo = [p for p in packs if p.name not in found.missing_packs]
    chunks = nbytes = 0
    with ThreadPoolExecutor(max(1, workers), "vmaccel-verify") as pool:
        for n, b, bad in pool.map(lambda p: _read_pack(repo, p), todo):
            chunks, nbytes = chunks + n, nbytes + b
            for loc, why in bad:
                found.located(loc, why)
    return chunks, nbytes


def _read_pack(repo: Repository, pack: PackRow) -> tuple[int, int, list[tuple[ChunkLocation, str]]]:
    bad: list[tuple[ChunkLocation, str]] = []
    n = nbytes = 0
    for segment in _segments(repo.index.chunks_in_pack(pack.id)):
        start = segment[0].offset
        end = segment[-1].offset + segment[-1].stored_len
        try:
            data = repo.packs.read(pack.name, start, end - start)
        except DamageError:
            data = b""  # fall back to one read per chunk to find the ones that fail
        for loc in segment:
            n += 1
            nbytes += loc.stored_len
            why = _check_chunk(repo, pack, loc, data, start)
            if why:
                bad.append((loc, why))
    return n, nbytes, bad


def _check_chunk(
    repo: Repository, pack: PackRow, loc: ChunkLocation, data: bytes, start: int
) -> str | None:
    if data:
        payload = data[loc.offset - start : loc.offset - start + loc.stored_len]
    else:
        try:
            payload = repo.packs.read(pack.name, loc.offset, loc.stored_len)
        except DamageError as exc:
            return str(exc)
    if zlib.crc32(payload) != loc.crc:
        return "payload crc mismatch (stored bytes changed)"
    try:
        repo.codec.decode(loc.id, loc.flags, loc.raw_len, payload)
    except DamageError as exc:
        return str(exc)
    return None


def _segments(rows: list[ChunkLocation]) -> Iterable[list[ChunkLocation]]:
    """Group a pack's chunks (by offset) into runs read with one call of bounded size."""
    run: list[ChunkLocation] = []
    for loc in rows:
        if run and loc.offset + loc.stored_len - run[0].offset > SEGMENT_BYTES:
            yield run
            run = []
        run.append(loc)
    if run:
        yield run

"""Fixtures for catalog tests: small real repositories written through the library."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.catalog.s3server import s3, seaweed  # noqa: F401 - the S3 fixtures
from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.catalog.blockmap import HOLE
from vmaccel.catalog.index import ChunkLocation, ImageRow
from vmaccel.vocabulary.errors import DamageError

BLOCK = 4096
FANOUT = 16
PASSPHRASE = "correct horse battery staple"


def small_config(**overrides: object) -> RepositoryConfig:
    """4 KiB blocks, fanout 16 (a 1 MiB disk has a two-level map), 64 KiB packs."""
    opts: dict[str, object] = {"block_size": BLOCK, "map_fanout": FANOUT, "pack_size": 65536}
    opts.update(overrides)
    return RepositoryConfig(**opts)  # type: ignore[arg-type]


def content(rng: random.Random, blocks: int) -> bytearray:
    """Random, compressible and zero blocks, in a repeating pattern."""
    out = bytearray()
    for i in range(blocks):
        kind = i % 4
        if kind in (0, 3):
            out += rng.randbytes(BLOCK)
        elif kind == 1:
            text = b"vmaccel compressible %d " % (i % 7)
            out += (text * (BLOCK // len(text) + 1))[:BLOCK]
        else:
            out += bytes(BLOCK)
    return out


@dataclass
class History:
    """A repository with several backups of two VMs, and the exact bytes each image holds."""

    path: Path
    passphrase: str | None = None
    expected: dict[tuple[int, str], bytes] = field(default_factory=dict)

    def open(self, write: bool = False) -> Repository:
        return Repository.open(self.path, self.passphrase, write=write)

    def read(self, backup_id: int, disk: str) -> bytes:
        with self.open() as repo:
            reader = repo.open_image(repo.image(repo.backup(backup_id), disk))
            try:
                return reader.read()
            finally:
                reader.close()

    def pread(self, backup_id: int, disk: str, offset: int, length: int) -> bytes:
        with self.open() as repo:
            reader = repo.open_image(repo.image(repo.backup(backup_id), disk), workers=1)
            try:
                return reader.pread(offset, length)
            finally:
                reader.close()

    def image(self, backup_id: int, disk: str) -> ImageRow:
        with self.open() as repo:
            return repo.image(repo.backup(backup_id), disk)

    def location(self, chunk_id: bytes) -> ChunkLocation:
        with self.open() as repo:
            loc = repo.index.chunk(chunk_id)
        assert loc is not None
        return loc

    def pack_path(self, name: str) -> Path:
        return self.path / "packs" / name[:2] / name

    def block_chunk(self, backup_id: int, disk: str, block: int) -> bytes:
        """The chunk id mapped at ``block`` of one image."""
        with self.open() as repo:
            img = repo.image(repo.backup(backup_id), disk)
            cid = repo.blockmap.lookup(repo.map_root(img), block, 1)[0]
        assert cid is not None
        return cid

    def block_map(self) -> dict[tuple[int, str], list[bytes | None]]:
        """(backup id, disk) -> the chunk id of every block (None for holes)."""
        with self.open() as repo:
            return {
                (b.id, img.disk): repo.blockmap.lookup(
                    repo.map_root(img), 0, repo.map_root(img).blocks
                )
                for b in repo.backups()
                for img in repo.images(b)
            }

    def node_positions(self) -> dict[tuple[int, str], list[tuple[bytes, int, int]]]:
        """(backup id, disk) -> every (node id, level, first block) of the image's map tree."""
        out: dict[tuple[int, str], list[tuple[bytes, int, int]]] = {}
        with self.open() as repo:
            for b in repo.backups():
                for img in repo.images(b):
                    nodes = out[(b.id, img.disk)] = []
                    if img.root is not None:
                        _positions(repo, img.root, img.depth - 1, 0, img.fanout, nodes)
        return out

    def ranges_using(self, cid: bytes) -> dict[tuple[int, str], list[tuple[int, int]]]:
        """Reference answer: the merged byte ranges of each image that need chunk ``cid``,
        whether it is a data chunk or a map node (computed from an undamaged repository)."""
        out: dict[tuple[int, str], list[tuple[int, int]]] = {}
        spans: dict[tuple[int, str], list[tuple[int, int]]] = {}
        for key, ids in self.block_map().items():
            spans[key] = [(i, 1) for i, c in enumerate(ids) if c == cid]
        for key, nodes in self.node_positions().items():
            spans[key] += [(first, FANOUT ** (level + 1)) for n, level, first in nodes if n == cid]
        for key, blocks in spans.items():
            size = len(self.expected[key])
            ranges = [
                (f * BLOCK, min((f + n) * BLOCK, size) - f * BLOCK)
                for f, n in sorted(blocks)
                if f * BLOCK < size
            ]
            if ranges:
                out[key] = merge(ranges)
        return out

    def check_reads(self, damaged: dict[tuple[int, str], list[tuple[int, int]]]) -> None:
        """Every ``damaged`` range of an image raises DamageError when read; every other byte
        of every image reads back exactly as written (sequentially, so read-ahead runs)."""
        with self.open() as repo:
            for (bid, disk), data in self.expected.items():
                bad = damaged.get((bid, disk), [])
                reader = repo.open_image(repo.image(repo.backup(bid), disk))
                try:
                    for off, length in bad:
                        for probe in (off, off + length - 1):
                            with pytest.raises(DamageError):
                                reader.pread(probe, 1)
                    pos = 0
                    for off, length in [*bad, (len(data), 0)]:
                        for start in range(pos, off, 65536):
                            end = min(start + 65536, off)
                            assert reader.pread(start, end - start) == data[start:end], (
                                f"backup {bid} {disk} bytes {start}..{end} differ"
                            )
                        pos = off + length
                finally:
                    reader.close()


def merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for off, length in sorted(ranges):
        if out and out[-1][0] + out[-1][1] >= off:
            last = out[-1]
            out[-1] = (last[0], max(last[1], off + length - last[0]))
        else:
            out.append((off, length))
    return out


def _positions(
    repo: Repository,
    node_id: bytes,
    level: int,
    first: int,
    fanout: int,
    out: list[tuple[bytes, int, int]],
) -> None:
    out.append((node_id, level, first))
    if level:
        for i, entry in enumerate(repo.blockmap.node(node_id, fanout)[1]):
            if entry != HOLE:
                _positions(repo, entry, level - 1, first + i * fanout**level, fanout, out)


def flip_byte(path: Path, offset: int) -> None:
    """Invert one byte of a file in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def _write_backup(
    repo: Repository,
    vm: str,
    disks: dict[str, bytes],
    parents: dict[str, tuple[ImageRow, bytes]],
) -> tuple[int, dict[str, tuple[ImageRow, bytes]]]:
    """One backup of ``vm``: a full per new disk, else only the 32 KiB runs that changed."""
    step = BLOCK * 8
    with repo.begin_backup(vm, meta={"test": True}) as bw:
        for disk, data in disks.items():
            parent, old = parents.get(disk, (None, None))
            w = bw.image_writer(disk, len(data), parent=parent)
            for off in range(0, len(data), step):
                piece = data[off : off + step]
                if old is not None and old[off : off + step] == piece:
                    continue
                if piece == bytes(len(piece)):
                    w.punch(off, len(piece))
                else:
                    w.write(off, piece)
            bw.finish_image(disk, w, parent, change_id=f"52 {vm}/{disk}")
        row = bw.commit()
    return row.id, {img.disk: (img, disks[img.disk]) for img in repo.images(row)}


def build_history(path: Path, config: RepositoryConfig, passphrase: str | None = None) -> History:
    """Three backups of vm1 (disk0 1 MiB, disk1 ~252 KiB with a short last block), two of vm2
    (disk0 512 KiB); each later one is an incremental with changed and newly zeroed blocks."""
    rng = random.Random(1234)
    Repository.init(path, config, passphrase)
    hist = History(path, passphrase)
    disks = {
        "vm1": {"disk0": content(rng, 256), "disk1": content(rng, 64)[: 63 * BLOCK + 1000]},
        "vm2": {"disk0": content(rng, 128)},
    }
    parents: dict[str, dict[str, tuple[ImageRow, bytes]]] = {"vm1": {}, "vm2": {}}
    with Repository.open(path, passphrase, write=True) as repo:
        for generation in range(3):
            for vm, vm_disks in disks.items():
                if vm == "vm2" and generation == 2:
                    continue
                if generation:
                    _mutate(rng, vm_disks, generation)
                frozen = {d: bytes(b) for d, b in vm_disks.items()}
                bid, parents[vm] = _write_backup(repo, vm, frozen, parents[vm])
                for disk, data in frozen.items():
                    hist.expected[(bid, disk)] = data
    return hist


def _mutate(rng: random.Random, disks: dict[str, bytearray], generation: int) -> None:
    for data in disks.values():
        for _ in range(3):
            block = rng.randrange(len(data) // BLOCK)
            data[block * BLOCK : (block + 1) * BLOCK] = rng.randbytes(BLOCK)
        first = (generation * 5) % (len(data) // BLOCK)
        data[first * BLOCK : (first + 2) * BLOCK] = bytes(2 * BLOCK)


@pytest.fixture
def history(tmp_path: Path) -> History:
    """An unencrypted repository with a history of backups (see :func:`build_history`)."""
    return build_history(tmp_path / "repo", small_config())


@pytest.fixture
def make_history(tmp_path: Path) -> Callable[..., History]:
    """Build a history with other settings: ``make_history(encryption="repokey")``."""

    def make(name: str = "repo", **overrides: object) -> History:
        secret = PASSPHRASE if overrides.get("encryption") == "repokey" else None
        return build_history(tmp_path / name, small_config(**overrides), secret)

    return make

"""vmaccel.fusemount.pattern: bulk reads to the read-ahead reader, the rest to a point reader,
with the same bytes as the in-process image reader whichever serves."""

from __future__ import annotations

import os
import random
from pathlib import Path

from vmaccel.catalog import Repository
from vmaccel.catalog.imagereader import ImageReader
from vmaccel.fusemount.mount import POINT_READER, image_opener
from vmaccel.fusemount.pattern import BULK_BYTES, STREAK, AccessPattern, PatternedImage
from vmaccel.fusemount.repoview import RepositoryView

from .conftest import BS, MakeRepo, MiB, backup_image

SIZE = 6 * MiB + 12345  # not a multiple of the block size: the last read is short


def test_big_requests_are_bulk_and_scattered_small_ones_are_not() -> None:
    p = AccessPattern()
    assert p.is_bulk(0, MiB) and p.is_bulk(5 * MiB, BULK_BYTES)
    rnd = random.Random(3)
    assert not any(p.is_bulk(rnd.randrange(1 << 20) * 4096 + (1 << 33), 4096) for _ in range(200))


def test_a_small_buffer_stream_becomes_bulk_at_its_streak() -> None:
    p = AccessPattern()
    verdicts = [p.is_bulk(off, 4096) for off in range(0, 8 * 4096, 4096)]
    assert verdicts == [False] * (STREAK - 1) + [True] * (8 - STREAK + 1)
    # slightly out of order (multi-threaded FUSE) still continues the stream
    assert p.is_bulk(8 * 4096 + 8192, 4096) and p.is_bulk(8 * 4096, 4096)


def test_interleaved_streams_are_each_recognised() -> None:
    p = AccessPattern()
    starts = [i * 100 * MiB for i in range(4)]
    rows = [[p.is_bulk(s + k * 4096, 4096) for s in starts] for k in range(6)]
    assert rows == [[k >= STREAK - 1] * len(starts) for k in range(6)]


def _image(path: Path) -> Path:
    """A sparse image: random blocks, repeated text, holes (in 64 KiB blocks)."""
    rnd = random.Random(11)
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for block in range(0, SIZE // BS + 1):
            kind = rnd.choice(("hole", "random", "text"))
            if kind != "hole":
                data = rnd.randbytes(BS) if kind == "random" else b"vmaccel line\n" * (BS // 13)
                os.pwrite(f.fileno(), data[: max(0, min(BS, SIZE - block * BS))], block * BS)
    return path


def _reads(rnd: random.Random) -> list[tuple[int, int]]:
    """(offset, length): 1 MiB sequential, a 4 KiB stream, random unaligned, past the end."""
    out = [(off, MiB) for off in range(0, SIZE, MiB)]
    out += [(2 * MiB + 100 + k * 4096, 4096) for k in range(12)]
    out += [(rnd.randrange(SIZE), rnd.choice((1, 512, 4096, 70_000, 200_000))) for _ in range(300)]
    out += [(SIZE - 10, 4096), (SIZE, 4096), (SIZE + MiB, 10)]
    return out


def test_patterned_reads_equal_the_in_process_reader_byte_for_byte(
    make_repo: MakeRepo, tmp_path: Path
) -> None:
    repo_path = make_repo()
    backup_image(repo_path, "vm1", {"disk0": _image(tmp_path / "disk0.raw")})
    with Repository.open(repo_path) as repo:
        row = repo.images(repo.backups()[-1].id)[0]
        view, point_view = RepositoryView(repo), RepositoryView(repo, **POINT_READER)
        mounted = image_opener(repo, view)(row.id)  # what the mount opens
        assert isinstance(mounted, PatternedImage)
        mounted.close()
        points: list[ImageReader] = []

        def open_point() -> ImageReader:
            points.append(point_view.open_image(row.id))
            return points[-1]

        patterned = PatternedImage(view.open_image(row.id), open_point)
        with repo.open_image(row) as slow:
            for off, n in _reads(random.Random(5)):
                want, got = bytearray(n), bytearray(n)
                n_want = slow.read_into(off, memoryview(want))
                assert patterned.read_into(off, memoryview(got)) == n_want, (off, n)
                assert got[:n_want] == want[:n_want], (off, n)
            assert list(patterned.extents()) == list(slow.extents())
        assert patterned.size == row.size == SIZE
        assert len(points) == 1  # the point reader served the small scattered reads
        patterned.close()
        assert points[0].closed

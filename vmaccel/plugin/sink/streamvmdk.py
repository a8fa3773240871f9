"""A streamOptimized VMDK generated front to back from an image: what an NFC import
(``ImportVApp`` / ``HttpNfcLease``) uploads for each disk.

Layout written (little-endian; a sector is 512 bytes), as the VMDK specification gives it:

1. the sparse header (1 sector): magic ``KDMV``, version 3, flags (valid newline test,
   compressed grains, markers), capacity and grain size in sectors, descriptor at sector 1,
   ``gdOffset`` -1 (the grain directory comes at the end), ``overHead`` (sectors before the
   first marker), compression 1 (deflate);
2. the text descriptor (``createType="streamOptimized"``, one ``SPARSE`` extent), padded;
3. for each grain (64 KiB) holding data, in LBA order: a grain marker (LBA in sectors, the
   compressed size), the zlib stream, padding to a sector. Holes and all-zero grains are not
   written: they read as zeros;
4. after the grains of each 32 MiB span (512 grains) that has any: a grain-table marker and
   the table (512 entries: the sector of each grain's marker, 0 for none);
5. a grain-directory marker and the directory (the sector of each table, 0 for none);
6. a footer marker and the footer (the header again, with the real ``gdOffset``), then the
   end-of-stream marker. The footer sits 1024 bytes before the end.

The stream's size is about the compressed data plus 0.2 % of tables: bytes sent follow the
image's allocated bytes, not the disk's size.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from vmaccel.plugin.sink.copy import ImageSource

SECTOR = 512
GRAIN = 64 * 1024
GTES_PER_GT = 512
MARKER_EOS, MARKER_GT, MARKER_GD, MARKER_FOOTER = 0, 1, 2, 3
_FLAGS = 1 | (1 << 16) | (1 << 17)  # valid newline test, compressed grains, markers
_GD_AT_END = 0xFFFFFFFFFFFFFFFF
_DESCRIPTOR_SECTORS = 20
_OVERHEAD_SECTORS = 128  # header + descriptor, rounded up to a grain as VMware does
BATCH_GRAINS = 128  # grains read, then compressed in parallel, at a time (8 MiB)
_ZERO = bytes(GRAIN)


@dataclass
class StreamCounters:
    """What a stream held so far: ``data_bytes`` of image data in the grains written,
    ``grains`` written, ``stream_bytes`` generated."""

    data_bytes: int = 0
    grains: int = 0
    stream_bytes: int = 0
    tables: dict[int, list[int]] = field(default_factory=dict, repr=False)


def header(capacity: int, gd_offset: int = _GD_AT_END) -> bytes:
    """The sparse extent header (or footer) for a disk of ``capacity`` bytes."""
    body = struct.pack(
        "<IIIQQQQIQQQBccccH",
        0x564D444B,  # "KDMV"
        3,
        _FLAGS,
        -(-capacity // SECTOR),
        GRAIN // SECTOR,
        1,
        _DESCRIPTOR_SECTORS,
        GTES_PER_GT,
        0,
        gd_offset,
        _OVERHEAD_SECTORS,
        0,
        b"\n",
        b" ",
        b"\r",
        b"\n",
        1,  # deflate
    )
    return body.ljust(SECTOR, b"\0")


def descriptor(capacity: int, name: str, adapter: str = "lsilogic") -> bytes:
    """The text descriptor of a streamOptimized disk of ``capacity`` bytes."""
    sectors = -(-capacity // SECTOR)
    heads, per_track = (
        (64, 32) if capacity < 1 << 30 else (128, 32) if capacity < 2 << 30 else (255, 63)
    )
    text = (
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        'createType="streamOptimized"\n\n# Extent description\n'
        f'RW {sectors} SPARSE "{name}"\n\n# The Disk Data Base\n#DDB\n\n'
        f'ddb.adapterType = "{adapter}"\n'
        f'ddb.geometry.cylinders = "{max(sectors // (heads * per_track), 1)}"\n'
        f'ddb.geometry.heads = "{heads}"\nddb.geometry.sectors = "{per_track}"\n'
        'ddb.virtualHWVersion = "4"\n'
    ).encode()
    if len(text) > _DESCRIPTOR_SECTORS * SECTOR:
        raise ValueError("descriptor too long")
    return text.ljust((_OVERHEAD_SECTORS - 1) * SECTOR, b"\0")


def _marker(sectors: int, kind: int) -> bytes:
    return struct.pack("<QII", sectors, 0, kind).ljust(SECTOR, b"\0")


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % SECTOR)


def _data_grains(image: ImageSource) -> Iterator[int]:
    """Indexes of the grains that overlap the image's data runs, ascending, once each."""
    last = -1
    for offset, length, is_data in image.extents():
        if not is_data or length <= 0:
            continue
        for g in range(max(offset // GRAIN, last + 1), (offset + length - 1) // GRAIN + 1):
            yield g
            last = g


def _deflate(data: bytes) -> bytes:
    return zlib.compress(data, 1)  # zlib releases the GIL: grains compress in parallel


def _batches(
    image: ImageSource, progress: Callable[[int], None] | None
) -> Iterator[list[tuple[int, bytes]]]:
    """(grain index, its bytes) of the data grains holding any non-zero byte, ``BATCH_GRAINS``
    at a time; all-zero grains are left out (they read as zeros)."""
    batch: list[tuple[int, bytes]] = []
    for g in _data_grains(image):
        start = g * GRAIN
        data = bytearray(min(GRAIN, image.size - start))
        n = image.read_into(start, memoryview(data))
        if progress is not None:
            progress(n)
        if data != _ZERO[: len(data)]:
            batch.append((g, bytes(data)))
        if len(batch) >= BATCH_GRAINS:
            yield batch
            batch = []
    if batch:
        yield batch


def stream_optimized(
    image: ImageSource,
    name: str = "disk.vmdk",
    counters: StreamCounters | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """The streamOptimized VMDK of ``image``, in pieces (see the module docstring).
    ``counters`` is updated as pieces are produced; ``progress`` gets the image bytes each
    grain covered."""
    c = counters if counters is not None else StreamCounters()
    size = image.size

    def emit(piece: bytes) -> bytes:
        c.stream_bytes += len(piece)
        return piece

    yield emit(header(size))
    yield emit(descriptor(size, name))
    with ThreadPoolExecutor(max(os.cpu_count() or 1, 1), "vmaccel-deflate") as pool:
        for batch in _batches(image, progress):
            packed = pool.map(_deflate, [data for _, data in batch])
            for (g, data), body in zip(batch, packed, strict=True):
                yield from _flush_tables(c, g // GTES_PER_GT, emit)
                at = c.stream_bytes // SECTOR
                c.tables.setdefault(g // GTES_PER_GT, [0] * GTES_PER_GT)[g % GTES_PER_GT] = at
                c.grains, c.data_bytes = c.grains + 1, c.data_bytes + len(data)
                marker = struct.pack("<QI", g * GRAIN // SECTOR, len(body))
                yield emit(_padded(marker + body))
    yield from _flush_tables(c, None, emit)
    yield from _trailer(c, size, emit)


def _flush_tables(
    c: StreamCounters, before: int | None, emit: Callable[[bytes], bytes]
) -> Iterator[bytes]:
    """Write the grain tables of spans before ``before`` (all when None) not yet written;
    their directory entries are kept as negative numbers until the end (tables hold grains,
    written ones hold the sector of the table)."""
    for index in sorted(c.tables):
        table = c.tables[index]
        if (before is not None and index >= before) or not table or table[0] < 0:
            continue
        body = struct.pack(f"<{GTES_PER_GT}I", *table)
        yield emit(_marker(len(body) // SECTOR, MARKER_GT))
        c.tables[index] = [-(c.stream_bytes // SECTOR)]  # where the table starts
        yield emit(body)


def _trailer(c: StreamCounters, size: int, emit: Callable[[bytes], bytes]) -> Iterator[bytes]:
    spans = -(-size // (GRAIN * GTES_PER_GT))
    directory = [0] * spans
    for index, table in c.tables.items():
        directory[index] = -table[0]
    body = _padded(struct.pack(f"<{spans}I", *directory))
    yield emit(_marker(len(body) // SECTOR, MARKER_GD))
    gd_offset = c.stream_bytes // SECTOR
    yield emit(body)
    yield emit(_marker(1, MARKER_FOOTER))
    yield emit(header(size, gd_offset))
    yield emit(_marker(0, MARKER_EOS))

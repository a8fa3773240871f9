"""Chunks: reading them back verified, and appending new ones to packs in write order.

Write order (DESIGN invariant 1), enforced here: a chunk is appended to the open pack; when the
pack passes its target size (or on :meth:`ChunkStore.flush`) it is sealed, fsynced and renamed
into place, and only then are its chunk rows committed to the index. Until that commit a chunk
is *pending*: known to this writer (so it is not stored twice) but invisible to everyone else.

Thread safety: ``load``/``load_node``/``known`` may be called from any thread. ``add``,
``store_node`` and ``flush`` belong to the single writer thread.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time

from catalog.codec import ChunkCodec, EncodedChunk
from catalog.errors import ChunkCorrupt, ChunkMissing, DamageError
from catalog.index import Index
from catalog.pack import KIND_DATA, KIND_NODE, PackWriter
from catalog.packstore import PackSink, PackStore

logger = logging.getLogger(__name__)


class ChunkStore:
    def __init__(
        self, index: Index, packs: PackStore, codec: ChunkCodec, repo_id: bytes, pack_size: int
    ) -> None:
        self.index, self.packs, self.codec = index, packs, codec
        self._repo_id, self._pack_size = repo_id, pack_size
        self._sink: PackSink | None = None
        self._writer: PackWriter | None = None
        self._pack_name = ""
        self._pending: set[bytes] = set()
        self._pending_nodes: dict[bytes, bytes] = {}
        self._lock = threading.Lock()
        self.stored_bytes = 0  # payload bytes appended by this store (new data, after codec)
        self.packs_written = 0

    # -- reading ----------------------------------------------------------------------------

    def load(self, chunk_id: bytes) -> bytes:
        """The verified plaintext of a committed chunk. Raises a :class:`DamageError`."""
        loc = self.index.chunk(chunk_id)
        if loc is None:
            raise ChunkMissing(f"chunk {chunk_id.hex()[:16]} is not in the index")
        payload = self.packs.read(loc.pack, loc.offset, loc.stored_len)
        try:
            return self.codec.decode(chunk_id, loc.flags, loc.raw_len, payload)
        except ChunkCorrupt as exc:
            raise ChunkCorrupt(f"{exc} (pack {loc.pack}, offset {loc.offset})") from None

    def load_node(self, node_id: bytes) -> bytes:
        with self._lock:
            pending = self._pending_nodes.get(node_id)
        return pending if pending is not None else self.load(node_id)

    def known(self, chunk_id: bytes) -> bool:
        """True if the chunk is stored or pending in this writer (no need to store it)."""
        return chunk_id in self._pending or self.index.has_chunk(chunk_id)

    # -- writing ----------------------------------------------------------------------------

    def add(self, chunk: EncodedChunk, kind: int = KIND_DATA) -> bool:
        """Append ``chunk`` unless it is known. Returns True if it was appended."""
        if self.known(chunk.id):
            return False
        writer = self._open_writer()
        writer.add(chunk.id, kind, chunk.flags, chunk.raw_len, chunk.payload, chunk.crc)
        self._pending.add(chunk.id)
        self.stored_bytes += len(chunk.payload)
        if writer.size >= self._pack_size:
            self.flush()
        return True

    def store_node(self, data: bytes) -> bytes:
        """Store one map node (dedup by content) and return its id."""
        node_id = self.codec.chunk_id(data)
        if not self.known(node_id):
            with self._lock:
                self._pending_nodes[node_id] = data
            self.add(self.codec.encode(data, node_id), KIND_NODE)
        return node_id

    def flush(self) -> None:
        """Seal the open pack: durable on disk, then its rows committed. Idempotent."""
        if self._writer is None or self._sink is None:
            return
        writer, sink, name = self._writer, self._sink, self._pack_name
        self._writer = self._sink = None
        try:
            size = writer.seal()
            sink.commit()
        except BaseException:
            sink.abort()
            raise
        with self.index.transaction():
            self.index.add_pack(name, size, time.time(), writer.entries)
        self.packs_written += 1
        with self._lock:
            self._pending.clear()
            self._pending_nodes.clear()
        logger.debug("sealed pack %s: %d chunks, %d bytes", name, len(writer), size)

    def abort(self) -> None:
        """Drop the open pack (its chunks were never visible)."""
        if self._sink is not None:
            self._sink.abort()
        self._writer = self._sink = None
        with self._lock:
            self._pending.clear()
            self._pending_nodes.clear()

    def _open_writer(self) -> PackWriter:
        if self._writer is None:
            self._pack_name = secrets.token_hex(16)
            self._sink = self.packs.create(self._pack_name)
            self._writer = PackWriter(self._sink.stream, self._repo_id)
        return self._writer


__all__ = ["ChunkStore", "DamageError"]

"""Types of the compiled chunk codec (native/chunkcodec.c, built by scripts/build_native.sh)."""

from collections.abc import Sequence

from typing_extensions import Buffer

BLAKE3_VERSION: str

def chunk_ids(data: Buffer, block_size: int, key: bytes | None, /) -> list[bytes | None]: ...
def compress_many(blocks: Sequence[Buffer], level: int, /) -> list[tuple[bytes | None, int]]: ...
def decode_many(
    items: Sequence[tuple[bytes, bool, Buffer, Buffer | int]], key: bytes | None, /
) -> list[bytes | str | None]: ...

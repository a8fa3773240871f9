"""Repository configuration: the ``config`` object of a repository (a file at its top).

It is JSON, written once by ``repo init`` through the object store and never rewritten in place
(a format upgrade would replace it atomically: ``put(replace=True)``). It holds nothing secret:
the wrapped key is the ``key`` object beside it.

Format version 1 fields:

``format``       integer, the on-disk format version; readers refuse versions they do not know.
``id``           32 hex digits, the repository id; every pack header carries it.
``block_size``   bytes per image block, a power of two between 4 KiB and 4 MiB.
``map_fanout``   entries per block-map node (see :mod:`vmaccel.catalog.blockmap`).
``compression``  ``"zstd"`` or ``"none"``; ``compression_level`` the zstd level.
``encryption``   ``"none"`` or ``"repokey"``.
``pack_size``    target pack size in bytes; a pack is sealed once it passes this size.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

from vmaccel.catalog.objectstore import ObjectStore
from vmaccel.vocabulary.errors import RepositoryError, UnsupportedFormat, UsageError

OBJECT = "config"  # the object key of the configuration

FORMAT_VERSION = 1
DEFAULT_BLOCK_SIZE = 64 * 1024
DEFAULT_MAP_FANOUT = 256
DEFAULT_PACK_SIZE = 32 * 1024 * 1024
MIN_BLOCK_SIZE = 4 * 1024
MAX_BLOCK_SIZE = 4 * 1024 * 1024
COMPRESSIONS = ("zstd", "none")
ENCRYPTIONS = ("none", "repokey")


@dataclass(frozen=True)
class RepositoryConfig:
    """The immutable settings of one repository (see the module docstring for each field)."""

    block_size: int = DEFAULT_BLOCK_SIZE
    compression: str = "zstd"
    compression_level: int = 3
    encryption: str = "none"
    map_fanout: int = DEFAULT_MAP_FANOUT
    pack_size: int = DEFAULT_PACK_SIZE
    id: str = field(default_factory=lambda: secrets.token_hex(16))
    format: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        bs = self.block_size
        if bs & (bs - 1) or not MIN_BLOCK_SIZE <= bs <= MAX_BLOCK_SIZE:
            raise UsageError(
                f"block size {bs} is not a power of two between "
                f"{MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE} bytes"
            )
        if self.compression not in COMPRESSIONS:
            raise UsageError(f"unknown compression {self.compression!r}; use zstd[:LEVEL] or none")
        if self.compression == "zstd" and not 1 <= self.compression_level <= 22:
            raise UsageError(f"zstd level {self.compression_level} is not between 1 and 22")
        if self.encryption not in ENCRYPTIONS:
            raise UsageError(f"unknown encryption {self.encryption!r}; use none or repokey")
        if not 16 <= self.map_fanout <= 4096:
            raise UsageError(f"map fanout {self.map_fanout} is not between 16 and 4096")
        if self.pack_size < self.block_size:
            raise UsageError("pack size must be at least one block")

    @property
    def repo_id(self) -> bytes:
        return bytes.fromhex(self.id)

    @property
    def encrypted(self) -> bool:
        return self.encryption != "none"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> RepositoryConfig:
        try:
            raw: dict[str, Any] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RepositoryError(f"{source} is not valid JSON: {exc}") from exc
        version = raw.get("format")
        if version != FORMAT_VERSION:
            raise UnsupportedFormat(
                f"{source}: repository format {version!r} is not supported by this vmaccel "
                f"(it reads format {FORMAT_VERSION}); upgrade vmaccel"
            )
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in raw.items() if k in known})
        except TypeError as exc:
            raise RepositoryError(f"{source} is incomplete: {exc}") from exc


def parse_compression(spec: str) -> tuple[str, int]:
    """Parse ``zstd``, ``zstd:LEVEL`` or ``none`` into (algorithm, level)."""
    name, _, level = spec.partition(":")
    if name == "none" and not level:
        return "none", 0
    if name == "zstd":
        try:
            return "zstd", int(level) if level else 3
        except ValueError:
            raise UsageError(f"zstd level {level!r} is not a number") from None
    raise UsageError(f"unknown compression {spec!r}; use zstd[:LEVEL] or none")


def save_config(store: ObjectStore, config: RepositoryConfig) -> None:
    """Write the ``config`` object (durably; never over an existing one)."""
    store.put(OBJECT, config.to_json().encode())


def load_config(store: ObjectStore, source: str) -> RepositoryConfig:
    """Read the ``config`` object (``source`` names it in errors). A missing one raises
    :class:`~vmaccel.catalog.objectstore.ObjectMissing`."""
    return RepositoryConfig.from_json(store.get(OBJECT).decode(errors="replace"), source)

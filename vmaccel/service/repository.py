"""Repositories as a whole: create one, its statistics, rebuild its index."""

from __future__ import annotations

from dataclasses import dataclass

from vmaccel.catalog.config import DEFAULT_PACK_SIZE, RepositoryConfig, parse_compression
from vmaccel.catalog.rebuild import RebuildReport, rebuild_index
from vmaccel.catalog.repository import Repository
from vmaccel.catalog.stats import RepositoryStats, repository_stats
from vmaccel.catalog.storeconfig import S3_PACK_SIZE, StoreSpec
from vmaccel.service.context import Context


@dataclass(frozen=True)
class NewRepository:
    """``block_size`` in bytes (a power of two, 4 KiB-4 MiB); ``compression`` as
    ``zstd[:LEVEL]`` or ``none``; ``encryption`` ``none`` or ``repokey``; ``store`` an S3
    bucket prefix for the objects; ``catalog`` a postgresql:// URL (no password) for the
    index (None: the SQLite ``index.db`` in the directory)."""

    block_size: int
    compression: str = "zstd:3"
    encryption: str = "none"
    store: StoreSpec | None = None  # None: the objects stay in the repository directory
    catalog: str | None = None


def init_repository(ctx: Context, new: NewRepository) -> RepositoryConfig:
    """Create an empty repository at the context's path; the passphrase is asked only for an
    encrypted one. Refuses a non-empty directory."""
    algo, level = parse_compression(new.compression)
    config = RepositoryConfig(
        block_size=new.block_size,
        compression=algo,
        compression_level=level or 3,
        encryption=new.encryption,
        pack_size=DEFAULT_PACK_SIZE if new.store is None else S3_PACK_SIZE,
    )
    passphrase = ctx.passphrase if config.encrypted else None
    Repository.init(ctx.require_repo(), config, passphrase, new.store, new.catalog)
    return config


def stats(ctx: Context) -> RepositoryStats:
    """Logical and stored bytes, dedup and compression ratios, chunk and pack counts."""
    with ctx.open() as r:
        return repository_stats(r)


def rebuild(ctx: Context) -> RebuildReport:
    """Recreate the index from the packs and manifests alone (``complete`` says whether
    everything was recovered)."""
    return rebuild_index(ctx.require_repo(), ctx.passphrase, ctx.lock_wait)

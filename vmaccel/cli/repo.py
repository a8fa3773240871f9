"""``vmaccel repo``: create a repository, show its statistics, rebuild its index."""

from __future__ import annotations

from typing import Annotated

import typer

from vmaccel.catalog.config import DEFAULT_BLOCK_SIZE, RepositoryConfig, parse_compression
from vmaccel.catalog.rebuild import rebuild_index
from vmaccel.catalog.repository import Repository
from vmaccel.catalog.stats import repository_stats
from vmaccel.cli.options import JsonOpt, LockWaitOpt, RepoOpt
from vmaccel.cli.output import console, emit
from vmaccel.cli.settings import build_settings
from vmaccel.vocabulary.errors import DamageError, UsageError

app = typer.Typer(help="Create and inspect repositories.", no_args_is_help=True)

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    """``65536``, ``64K``, ``64KiB``, ``1M`` -> bytes."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1:] if t[-1:] in _UNITS else ""
    try:
        return int(t[: len(t) - len(unit)]) * _UNITS[unit]
    except ValueError:
        raise UsageError(f"{text!r} is not a size (examples: 65536, 64K, 1M)") from None


@app.command("init")
def init(
    repo: RepoOpt = None,
    block_size: Annotated[
        str, typer.Option("--block-size", help="Image block size (power of two, 4K-4M).")
    ] = f"{DEFAULT_BLOCK_SIZE // 1024}K",
    compression: Annotated[
        str, typer.Option("--compression", help="zstd[:LEVEL] or none.")
    ] = "zstd:3",
    encryption: Annotated[
        str, typer.Option("--encryption", help="none or repokey (passphrase-wrapped key).")
    ] = "none",
) -> None:
    """Create an empty repository."""
    settings = build_settings(repo, confirm_passphrase=True)
    algo, level = parse_compression(compression)
    config = RepositoryConfig(
        block_size=parse_size(block_size),
        compression=algo,
        compression_level=level or 3,
        encryption=encryption,
    )
    path = settings.require_repo()
    Repository.init(path, config, settings.passphrase if config.encrypted else None)
    console.print(
        f"initialized repository {path} (block size {config.block_size // 1024} KiB, "
        f"compression {compression}, encryption {encryption})",
        highlight=False,
    )


@app.command("stats")
def stats(repo: RepoOpt = None, as_json: JsonOpt = False) -> None:
    """Logical and stored bytes, dedup and compression ratios, chunk and pack counts."""
    settings = build_settings(repo)
    with Repository.open(settings.require_repo(), settings.passphrase) as r:
        emit(repository_stats(r), as_json)


@app.command("rebuild-index")
def rebuild(repo: RepoOpt = None, lock_wait: LockWaitOpt = 0.0, as_json: JsonOpt = False) -> None:
    """Recreate the catalog index from the pack files and backup manifests alone.

    Exits 6 (damage) when anything could not be restored; the report names what."""
    settings = build_settings(repo, lock_wait)
    report = rebuild_index(settings.require_repo(), settings.passphrase, settings.lock_wait)
    emit(report, as_json)
    if not report.complete:
        raise typer.Exit(DamageError.exit_code)

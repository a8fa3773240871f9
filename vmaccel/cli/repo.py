"""``vmaccel repo``: create a repository, show its statistics, rebuild its index."""

from __future__ import annotations

from typing import Annotated

import typer

from vmaccel.catalog.config import DEFAULT_BLOCK_SIZE
from vmaccel.cli.options import JsonOpt, LockWaitOpt, RepoOpt
from vmaccel.cli.output import emit, say
from vmaccel.cli.settings import context
from vmaccel.service import repository
from vmaccel.vocabulary.errors import DamageError
from vmaccel.vocabulary.units import parse_size

app = typer.Typer(help="Create and inspect repositories.", no_args_is_help=True)


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
    ctx = context(repo, confirm_passphrase=True)
    new = repository.NewRepository(parse_size(block_size), compression, encryption)
    config = repository.init_repository(ctx, new)
    say(
        f"initialized repository {ctx.repo} (block size {config.block_size // 1024} KiB, "
        f"compression {compression}, encryption {encryption})"
    )


@app.command("stats")
def stats(repo: RepoOpt = None, as_json: JsonOpt = False) -> None:
    """Logical and stored bytes, dedup and compression ratios, chunk and pack counts."""
    emit(repository.stats(context(repo)), as_json)


@app.command("rebuild-index")
def rebuild(repo: RepoOpt = None, lock_wait: LockWaitOpt = 0.0, as_json: JsonOpt = False) -> None:
    """Recreate the catalog index from the pack files and backup manifests alone.

    Exits 6 (damage) when anything could not be restored; the report names what."""
    report = repository.rebuild(context(repo, lock_wait))
    emit(report, as_json)
    if not report.complete:
        raise typer.Exit(DamageError.exit_code)

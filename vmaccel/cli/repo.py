"""``vmaccel repo``: create a repository, show its statistics, rebuild its index, move it to
S3 and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vmaccel.catalog.config import DEFAULT_BLOCK_SIZE
from vmaccel.catalog.s3lock import DAY
from vmaccel.catalog.storeconfig import StoreSpec
from vmaccel.cli.options import JsonOpt, LockWaitOpt, RepoOpt
from vmaccel.cli.output import emit, say
from vmaccel.cli.progress import byte_progress
from vmaccel.cli.settings import context
from vmaccel.daemon.lock import DaemonLock
from vmaccel.service import repomigrate, repository
from vmaccel.service.jobs import owner_id
from vmaccel.vocabulary.errors import DamageError, UsageError
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
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="s3://BUCKET/PREFIX for the objects (credentials: the AWS variables or profile).",
        ),
    ] = None,
    endpoint: Annotated[str | None, typer.Option("--endpoint", help="S3 endpoint URL.")] = None,
    region: Annotated[str, typer.Option("--region", help="S3 region.")] = "us-east-1",
    object_lock: Annotated[
        str | None,
        typer.Option("--object-lock", help="compliance or governance (needs --lock-days)."),
    ] = None,
    lock_days: Annotated[int, typer.Option("--lock-days", min=0, help="Object Lock days.")] = 0,
    catalog: Annotated[
        str | None,
        typer.Option(
            "--catalog",
            help="postgresql://USER@HOST/DB for the catalog (password: PGPASSWORD, ~/.pgpass).",
        ),
    ] = None,
) -> None:
    """Create an empty repository (its objects in the directory, or in S3 with --store)."""
    ctx = context(repo, confirm_passphrase=True)
    spec = _store_spec(store, endpoint, region, object_lock, lock_days)
    new = repository.NewRepository(parse_size(block_size), compression, encryption, spec, catalog)
    config = repository.init_repository(ctx, new)
    where = f" with its objects in {spec.location.describe()}" if spec else ""
    where += " and its catalog in PostgreSQL" if catalog else ""
    lock = f", Object Lock {object_lock} {lock_days} day(s)" if spec and spec.lock else ""
    say(
        f"initialized repository {ctx.repo}{where} (block size {config.block_size // 1024} "
        f"KiB, compression {compression}, encryption {encryption}{lock})"
    )


def _store_spec(
    store: str | None, endpoint: str | None, region: str, lock: str | None, days: int
) -> StoreSpec | None:
    if store is None:
        if endpoint or lock or days:
            raise UsageError("--endpoint, --object-lock and --lock-days need --store s3://...")
        return None
    if endpoint is None:
        raise UsageError("--store needs --endpoint URL")
    if bool(lock) != bool(days):
        raise UsageError("--object-lock and --lock-days go together")
    return StoreSpec(store, endpoint, region, lock, days * DAY)


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


_DestArg = Annotated[
    Path, typer.Argument(metavar="DEST", help="The new repository directory.", show_default=False)
]
_StoreOpt = Annotated[
    str | None, typer.Option("--store", help="s3://BUCKET/PREFIX for the objects (empty prefix).")
]
_EndpointOpt = Annotated[str | None, typer.Option("--endpoint", help="S3 endpoint URL.")]
_RegionOpt = Annotated[str, typer.Option("--region", help="S3 region.")]
_LockModeOpt = Annotated[
    str | None, typer.Option("--object-lock", help="compliance or governance (needs --lock-days).")
]
_LockDaysOpt = Annotated[int, typer.Option("--lock-days", min=0, help="Object Lock days.")]
_CatalogOpt = Annotated[
    str | None,
    typer.Option("--catalog", help="postgresql://USER@HOST/DB, an empty database (no password)."),
]


@app.command("migrate")
def migrate(
    dest: _DestArg,
    repo: RepoOpt = None,
    store: _StoreOpt = None,
    endpoint: _EndpointOpt = None,
    region: _RegionOpt = "us-east-1",
    object_lock: _LockModeOpt = None,
    lock_days: _LockDaysOpt = 0,
    catalog: _CatalogOpt = None,
    lock_wait: LockWaitOpt = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Copy the repository (--repo) to DEST, a new one with its objects in S3 and its catalog
    in PostgreSQL. The source is locked against backups, maintenance and `vmaccel serve`
    while it is copied, and never changed."""
    spec = _store_spec(store, endpoint, region, object_lock, lock_days)
    if spec is None or catalog is None:
        raise UsageError(
            "repo migrate needs --store s3://BUCKET/PREFIX (with --endpoint URL) and"
            " --catalog postgresql://USER@HOST/DB"
        )
    ctx, target = context(repo, lock_wait), repomigrate.MigrationTarget(dest, spec, catalog)
    # No daemon may serve the source meanwhile: it writes policy and job rows without the
    # repository locks that keep backups and maintenance out.
    daemon = DaemonLock(ctx.require_repo(), f"{owner_id()} (repo migrate)")
    with byte_progress(not as_json) as track:
        report = repomigrate.migrate_repository(ctx, target, track, also_hold=daemon)
    emit(report, as_json)

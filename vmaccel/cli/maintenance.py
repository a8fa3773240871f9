"""``vmaccel verify``, ``prune`` and ``gc``: three verbs over the maintenance use cases."""

from __future__ import annotations

from typing import Annotated

import typer

from vmaccel.cli.options import JsonOpt, LockWaitOpt, RepoOpt
from vmaccel.cli.output import emit
from vmaccel.cli.settings import context
from vmaccel.plugin.boot.console import DEFAULT_MARKER
from vmaccel.service import bootcheck, maintenance
from vmaccel.vocabulary.errors import BootFailed, DamageError, NoSpaceLeft, UsageError

_Keep = Annotated[int, typer.Option(min=0, show_default=False)]
_BootOpt = Annotated[
    str | None,
    typer.Option(
        "--boot",
        metavar="BACKUP",
        help="Boot this restore point under qemu (ID, VM@latest, ...) and record the outcome.",
        show_default=False,
    ),
]
_TimeoutOpt = Annotated[
    float,
    typer.Option("--timeout", min=1.0, metavar="SECONDS", help="--boot: wait this long."),
]
_ExpectOpt = Annotated[
    str,
    typer.Option(
        "--expect", metavar="REGEX", help="--boot: the serial-console text that means booted."
    ),
]
_AccelOpt = Annotated[
    str,
    typer.Option("--accel", help="--boot: auto (KVM when usable, else TCG), kvm or tcg."),
]


def verify(
    repo: RepoOpt = None,
    full: Annotated[bool, typer.Option("--full", help="Re-read and re-hash every chunk.")] = False,
    boot: _BootOpt = None,
    timeout: _TimeoutOpt = 300.0,
    expect: _ExpectOpt = DEFAULT_MARKER,
    accel: _AccelOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Check the repository; exit non-zero and name what is damaged when anything is.

    With --boot BACKUP, boot that restore point instead (read-only, under qemu) and record
    with it whether the marker appeared, how fast, and a screenshot; exit 16 when it did
    not boot."""
    if boot is not None:
        if full:
            raise UsageError("--full checks the repository; --boot boots one backup: pick one")
        request = bootcheck.BootRequest(boot, timeout, expect, accel)
        booted = bootcheck.verify_boot(context(repo), request)
        emit(booted, as_json)
        if not booted.passed:
            raise typer.Exit(BootFailed.exit_code)
        return
    report = maintenance.verify(context(repo), full=full)
    emit(report, as_json)
    if not report.ok:
        raise typer.Exit(DamageError.exit_code)


def prune(
    repo: RepoOpt = None,
    keep_last: _Keep = 0,
    keep_hourly: _Keep = 0,
    keep_daily: _Keep = 0,
    keep_weekly: _Keep = 0,
    keep_monthly: _Keep = 0,
    keep_yearly: _Keep = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would go.")] = False,
    lock_wait: LockWaitOpt = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Remove backups (metadata only) that no --keep rule keeps, per VM. Run gc to free space."""
    policy = maintenance.retention(
        keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly
    )
    emit(maintenance.prune(context(repo, lock_wait), policy, dry_run=dry_run), as_json)


def gc(
    repo: RepoOpt = None,
    grace: Annotated[
        float,
        typer.Option(
            "--grace", metavar="SECONDS", help="Keep unreferenced data younger than this."
        ),
    ] = 3600.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report.")] = False,
    lock_wait: LockWaitOpt = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Delete chunks no backup references (mark and sweep); repack mostly-dead packs.

    Exits 15 (no space left) when some packs could not be repacked for lack of free space; the
    report says how many bytes more it needs."""
    report = maintenance.gc(context(repo, lock_wait), grace_seconds=grace, dry_run=dry_run)
    emit(report, as_json)
    if report.space_needed:
        raise typer.Exit(NoSpaceLeft.exit_code)


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
    app.command("prune")(prune)
    app.command("gc")(gc)

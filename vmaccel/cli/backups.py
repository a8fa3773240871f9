"""``vmaccel backups list|show|ack|thresholds|patterns|forget-pattern``: the restore points in a
repository, their verdicts, and the verdict's thresholds and accepted patterns."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vmaccel.cli.options import BackupArg, JsonOpt, RepoOpt
from vmaccel.cli.output import console, print_json, say
from vmaccel.cli.settings import context
from vmaccel.service import anomaly, backups, bootcheck
from vmaccel.vocabulary.units import format_bytes

app = typer.Typer(help="List and inspect backups.", no_args_is_help=True)


@app.command("list")
def list_backups(
    repo: RepoOpt = None,
    vm: Annotated[str | None, typer.Option("--vm", help="Only this VM.")] = None,
    clean: Annotated[
        bool,
        typer.Option(
            "--clean", help="Only restore points before the first suspicious (unacked) one."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Complete backups, oldest first, with their anomaly verdict."""
    found = backups.list_backups(context(repo), vm, clean)
    if as_json:
        print_json([b.to_dict() for b in found])
        return
    table = Table("id", "vm", "time (UTC)", "disks", "size", "new stored", "verdict")
    for b in found:
        row = b.backup
        table.add_row(
            str(row.id),
            row.vm,
            b.time,
            str(len(b.images)),
            format_bytes(b.size),
            format_bytes(b.stored_bytes),
            _verdict(b),
        )
    console.print(table)


@app.command("show")
def show(
    backup: BackupArg,
    repo: RepoOpt = None,
    screenshot: Annotated[
        Path | None,
        typer.Option(
            "--screenshot",
            metavar="FILE",
            help="Also write the screen of the last boot test (verify --boot) to FILE.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """One backup in detail: its images, modes, changeIds, metadata and last boot test."""
    b = backups.show_backup(context(repo), backup)
    if screenshot is not None:
        image, _ = bootcheck.load_screenshot(context(repo), str(b.backup.id))
        screenshot.write_bytes(image)
    if as_json:
        print_json(b.to_dict())
        return
    say(f"backup {b.backup.id} of {b.backup.vm} at {b.time} ({b.backup.uuid})")
    for img in b.images:
        say(
            f"  {img.disk}: {format_bytes(img.size)}, {img.meta.mode or '?'}, "
            f"changeId {img.change_id or '-'}"
        )
    say(f"  verdict: {_verdict(b)}")
    verdict = b.backup.meta.verdict
    for reason in verdict.reasons if verdict is not None else ():
        say(f"    {reason}")
    say(f"  boot test: {_boot(b)}")


@app.command("ack")
def ack(
    backup: BackupArg,
    repo: RepoOpt = None,
    pattern: Annotated[
        bool,
        typer.Option(
            "--pattern",
            help="Also accept what fired as normal for this VM: similar findings stop "
            "raising later verdicts.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Acknowledge a suspicious verdict (a false alarm): prune may then remove the backup."""
    b = backups.ack_backup(context(repo), backup, pattern)
    if as_json:
        print_json(b.to_dict())
        return
    say(f"backup {b.backup.id} of {b.backup.vm}: verdict {_verdict(b)}")
    if b.pattern is not None:
        say(f"  accepted pattern {b.pattern.id}:")
        for f in b.pattern.findings:
            say(f"    {f.disk}: {f.finding.reason}")


@app.command("thresholds")
def thresholds(
    repo: RepoOpt = None,
    vm: Annotated[str | None, typer.Option("--vm", help="As they apply to this VM.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The anomaly thresholds in effect (the repository's anomaly.toml over the defaults)."""
    eff = anomaly.effective_thresholds(context(repo), vm)
    if as_json:
        print_json(eff.to_dict())
        return
    source = eff.file if eff.exists else f"defaults (no {eff.file})"
    say(f"thresholds from {source}" + (f" for {vm}" if vm else ""))
    if eff.overrides:
        tables = ", ".join(f'[vm."{o}"]' for o in eff.overrides)
        say(f"  overridden by {tables}")
    for key, value in eff.to_dict()["thresholds"].items():
        shown = ", ".join(value) if isinstance(value, list) else value
        say(f"  {key} = {shown}")


@app.command("patterns")
def patterns(
    repo: RepoOpt = None,
    vm: Annotated[str | None, typer.Option("--vm", help="Only this VM.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Accepted anomaly patterns (backups ack --pattern), oldest first."""
    found = anomaly.list_patterns(context(repo), vm)
    if as_json:
        print_json([p.to_json() for p in found])
        return
    if not found:
        say("no accepted patterns")
    for p in found:
        say(f"pattern {p.id} of {p.vm}, from backup {p.backup_id}:")
        for f in p.findings:
            say(f"  {f.disk}: {f.finding.reason}")


@app.command("forget-pattern")
def forget_pattern(
    pattern_id: Annotated[int, typer.Argument(metavar="ID", help="The pattern's id.")],
    repo: RepoOpt = None,
) -> None:
    """Forget an accepted pattern: its findings raise later verdicts again."""
    anomaly.forget_pattern(context(repo), pattern_id)
    say(f"forgot accepted pattern {pattern_id}")


def _verdict(b: backups.BackupDetail) -> str:
    """The verdict as one word (``-`` for backups taken before verdicts existed)."""
    meta = b.backup.meta
    if meta.verdict is None:
        return "-"
    word = meta.verdict.level + (" (learning)" if meta.verdict.learning else "")
    return f"{word}, acked {meta.acked}" if meta.acked else word


def _boot(b: backups.BackupDetail) -> str:
    """The last boot test in one line (``-`` when the backup was never boot-tested)."""
    check = b.backup.meta.boot
    if check is None:
        return "-"
    how = f"{check.firmware}, {check.accel}, {check.time}"
    if check.passed:
        return f"booted, marker after {check.seconds:.1f} s ({how})"
    return f"did not boot: {check.reason} after {check.seconds:.1f} s ({how}): {check.detail}"

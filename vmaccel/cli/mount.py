"""``vmaccel mount`` and ``vmaccel umount``: every backup as a read-only file system.

fusemount is imported inside the commands only (import-linter allows this one edge), so the
rest of the CLI, and backups, run on hosts without libfuse.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from vmaccel.catalog.repository import Repository
from vmaccel.cli.options import RepoOpt
from vmaccel.cli.output import console
from vmaccel.cli.settings import ENV_PASSPHRASE, build_settings
from vmaccel.vocabulary.errors import BackupNotFound, UsageError

# The background mode re-runs this CLI in the foreground mode, detached.
_CHILD = "import sys; from vmaccel.cli.app import run; sys.argv[0] = 'vmaccel'; run()"


def mount(
    mountpoint: Annotated[Path, typer.Argument(help="An empty directory to mount on.")],
    repo: RepoOpt = None,
    vm: Annotated[str | None, typer.Option("--vm", help="Show only this VM.")] = None,
    backup: Annotated[
        str | None,
        typer.Option("--backup", help="Show only this backup: ID, VM@latest or VM@<time>."),
    ] = None,
    foreground: Annotated[
        bool, typer.Option("--foreground", "-f", help="Stay in the foreground until unmounted.")
    ] = False,
    allow_other: Annotated[
        bool, typer.Option("--allow-other", help="Let other users (e.g. a hypervisor) read it.")
    ] = False,
    writable: Annotated[
        Path | None,
        typer.Option(
            "--writable",
            metavar="OVERLAY_DIR",
            help="Let image files (-flat.vmdk, .raw) take writes, kept in copy-on-write "
            "overlays in OVERLAY_DIR (never in the repository), e.g. to run a VM from them.",
        ),
    ] = None,
    keep_overlay: Annotated[
        bool, typer.Option("--keep-overlay", help="Keep the overlays at unmount (--writable).")
    ] = False,
    direct_io: Annotated[
        bool,
        typer.Option(
            "--direct-io/--no-direct-io",
            help="Image files bypass the kernel page cache (default; other files never do).",
            hidden=True,
        ),
    ] = True,
) -> None:
    """Mount a repository: /<vm>/<time>/<disk>.vmdk, -flat.vmdk, .raw, vm.json, files/.

    Read-only, unless --writable gives image files a copy-on-write overlay."""
    from vmaccel.fusemount.backupref import resolve_backup
    from vmaccel.fusemount.mount import MountOptions, check_mountpoint, serve, start_detached

    if keep_overlay and writable is None:
        raise UsageError("--keep-overlay needs --writable OVERLAY_DIR")
    settings = build_settings(repo)
    path = settings.require_repo()
    mountpoint = mountpoint.absolute()
    overlay_dir = writable.absolute() if writable is not None else None
    check_mountpoint(mountpoint)
    with Repository.open(path, settings.passphrase) as r:
        backup_id = resolve_backup(r, backup).id if backup else None
        if vm is not None and not r.backups(vm=vm):
            raise BackupNotFound(f"VM {vm!r} has no complete backups in {path}")
        if foreground:
            options = MountOptions(
                vm=vm,
                backup_id=backup_id,
                allow_other=allow_other,
                direct_io=direct_io,
                overlay_dir=overlay_dir,
                keep_overlay=keep_overlay,
            )
            serve(r, mountpoint, options)
            return
        encrypted = r.config.encrypted
    command = [sys.executable, "-c", _CHILD, "mount", "--repo", str(path), str(mountpoint), "-f"]
    command += ["--vm", vm] if vm is not None else []
    command += ["--backup", str(backup_id)] if backup_id is not None else []
    command += ["--allow-other"] if allow_other else []
    command += ["--direct-io"] if direct_io else ["--no-direct-io"]
    command += ["--writable", str(overlay_dir)] if overlay_dir is not None else []
    command += ["--keep-overlay"] if keep_overlay else []
    env = dict(os.environ)
    if encrypted:
        env[ENV_PASSPHRASE] = settings.passphrase()  # asked once, here, not in the child
    pid = start_detached(command, mountpoint, env)
    console.print(
        f"mounted {path} at {mountpoint} (process {pid}); "
        f"unmount with: vmaccel umount {mountpoint}",
        highlight=False,
        markup=False,
    )


def umount(
    mountpoint: Annotated[Path, typer.Argument(help="Where a repository is mounted.")],
    lazy: Annotated[
        bool, typer.Option("--lazy", help="Detach now even if busy; finish when unused.")
    ] = False,
) -> None:
    """Unmount a repository mounted with `vmaccel mount`."""
    from vmaccel.fusemount.mount import umount as do_umount

    do_umount(mountpoint, lazy=lazy)


def register(app: typer.Typer) -> None:
    app.command("mount")(mount)
    app.command("umount")(umount)

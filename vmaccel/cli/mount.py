"""``vmaccel mount`` and ``vmaccel umount``: every backup as a read-only file system.

The mount use cases import fusemount when they run, so the rest of the CLI, and backups, run
on hosts without libfuse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vmaccel.cli.options import RepoOpt
from vmaccel.cli.output import say
from vmaccel.cli.settings import context
from vmaccel.service import browse

_MountpointArg = Annotated[Path, typer.Argument(help="An empty directory to mount on.")]
_VmOpt = Annotated[str | None, typer.Option("--vm", help="Show only this VM.")]
_BackupOpt = Annotated[
    str | None,
    typer.Option("--backup", help="Show only this backup: ID, VM@latest, VM@-N or VM@<time>."),
]
_ForegroundOpt = Annotated[
    bool, typer.Option("--foreground", "-f", help="Stay in the foreground until unmounted.")
]
_AllowOtherOpt = Annotated[
    bool, typer.Option("--allow-other", help="Let other users (e.g. a hypervisor) read it.")
]
_WritableOpt = Annotated[
    Path | None,
    typer.Option(
        "--writable",
        metavar="OVERLAY_DIR",
        help="Let image files (-flat.vmdk, .raw) take writes, kept in copy-on-write "
        "overlays in OVERLAY_DIR (never in the repository), e.g. to run a VM from them.",
    ),
]
_KeepOverlayOpt = Annotated[
    bool, typer.Option("--keep-overlay", help="Keep the overlays at unmount (--writable).")
]
_DirectIoOpt = Annotated[
    bool,
    typer.Option(
        "--direct-io/--no-direct-io",
        help="Image files bypass the kernel page cache (default; other files never do).",
        hidden=True,
    ),
]


def mount(
    mountpoint: _MountpointArg,
    repo: RepoOpt = None,
    vm: _VmOpt = None,
    backup: _BackupOpt = None,
    foreground: _ForegroundOpt = False,
    allow_other: _AllowOtherOpt = False,
    writable: _WritableOpt = None,
    keep_overlay: _KeepOverlayOpt = False,
    direct_io: _DirectIoOpt = True,
) -> None:
    """Mount a repository: /<vm>/<time>/<disk>.vmdk, -flat.vmdk, .raw, vm.json, files/.

    Read-only, unless --writable gives image files a copy-on-write overlay."""
    request = browse.MountRequest(
        mountpoint, vm, backup, allow_other, direct_io, writable, keep_overlay
    )
    done = browse.mount(context(repo), request, foreground)
    if done.pid is not None:
        say(
            f"mounted {done.repo} at {done.mountpoint} (process {done.pid}); "
            f"unmount with: vmaccel umount {done.mountpoint}"
        )


def umount(
    mountpoint: Annotated[Path, typer.Argument(help="Where a repository is mounted.")],
    lazy: Annotated[
        bool, typer.Option("--lazy", help="Detach now even if busy; finish when unused.")
    ] = False,
) -> None:
    """Unmount a repository mounted with `vmaccel mount`."""
    browse.umount(mountpoint, lazy=lazy)


def register(app: typer.Typer) -> None:
    app.command("mount")(mount)
    app.command("umount")(umount)

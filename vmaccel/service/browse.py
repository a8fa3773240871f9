"""Looking into backups without restoring: the file catalog, and mounts.

A mount in the background runs in a detached child process; the child gets its request as
JSON in ``VMACCEL_MOUNT_REQUEST`` (and the passphrase of an encrypted repository, asked once
by the parent, in ``VMACCEL_PASSPHRASE``), so nothing is re-serialised into command lines.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vmaccel.service.backups import resolve_backup
from vmaccel.service.context import ENV_PASSPHRASE, Context
from vmaccel.vocabulary.errors import BackupNotFound, LocalIOError, UsageError, VmaccelError

if TYPE_CHECKING:
    from vmaccel.catalog.filecatalog import FileHit
    from vmaccel.fusemount.mount import MountOptions

ENV_MOUNT_REQUEST = "VMACCEL_MOUNT_REQUEST"
_CHILD = "from vmaccel.service.browse import serve_child; serve_child()"


@dataclass(frozen=True)
class MountRequest:
    """What to mount where. ``vm`` and ``backup`` (any backup reference) limit the tree;
    ``overlay_dir`` makes image files writable through copy-on-write overlays kept there
    (never in the repository), ``keep_overlay`` keeps them at unmount."""

    mountpoint: Path
    vm: str | None = None
    backup: str | None = None
    allow_other: bool = False
    direct_io: bool = True
    overlay_dir: Path | None = None
    keep_overlay: bool = False


@dataclass(frozen=True)
class Mounted:
    """A mount that is live (``pid`` of its process) or, in the foreground, has ended."""

    repo: Path
    mountpoint: Path
    pid: int | None


def find_files(
    ctx: Context, pattern: str, vm: str | None = None, limit: int = 1000
) -> list[FileHit]:
    """Every restore point holding a path matching the glob ``pattern`` (at most ``limit``)."""
    with ctx.open() as r:
        return r.find_files(pattern, vm, limit)


def mount(ctx: Context, request: MountRequest, foreground: bool = False) -> Mounted:
    """Mount the repository at ``request.mountpoint``: in the foreground until unmounted, or
    in a detached process (returned once the mount is live)."""
    from vmaccel.fusemount.mount import check_mountpoint, serve, start_detached

    if request.keep_overlay and request.overlay_dir is None:
        raise UsageError("--keep-overlay needs --writable OVERLAY_DIR")
    path = ctx.require_repo()
    mountpoint = request.mountpoint.absolute()
    check_mountpoint(mountpoint)
    with ctx.open() as r:
        backup_id = resolve_backup(r, request.backup).id if request.backup else None
        if request.vm is not None and not r.backups(vm=request.vm):
            raise BackupNotFound(f"VM {request.vm!r} has no complete backups in {path}")
        options = _options(request, backup_id)
        if foreground:
            serve(r, mountpoint, options)
            return Mounted(path, mountpoint, None)
        encrypted = r.config.encrypted
    env = dict(os.environ)
    env[ENV_MOUNT_REQUEST] = json.dumps(_spec(path, mountpoint, options))
    if encrypted:
        env[ENV_PASSPHRASE] = ctx.passphrase()  # asked once, here, not in the child
    pid = start_detached([sys.executable, "-c", _CHILD], mountpoint, env)
    return Mounted(path, mountpoint, pid)


def umount(mountpoint: Path, lazy: bool = False) -> None:
    """Unmount a vmaccel mount (``lazy``: detach now, finish when no longer busy)."""
    from vmaccel.fusemount.mount import umount as do_umount

    do_umount(mountpoint, lazy=lazy)


def _options(request: MountRequest, backup_id: int | None) -> MountOptions:
    from vmaccel.fusemount.mount import MountOptions

    return MountOptions(
        vm=request.vm,
        backup_id=backup_id,
        allow_other=request.allow_other,
        direct_io=request.direct_io,
        overlay_dir=request.overlay_dir.absolute() if request.overlay_dir else None,
        keep_overlay=request.keep_overlay,
    )


def _spec(repo: Path, mountpoint: Path, options: MountOptions) -> dict[str, object]:
    return {
        "repo": str(repo),
        "mountpoint": str(mountpoint),
        "vm": options.vm,
        "backup_id": options.backup_id,
        "allow_other": options.allow_other,
        "direct_io": options.direct_io,
        "overlay_dir": str(options.overlay_dir) if options.overlay_dir else None,
        "keep_overlay": options.keep_overlay,
    }


def serve_child() -> None:
    """The detached mount process: serve the request of ``$VMACCEL_MOUNT_REQUEST`` until
    unmounted. Failures end it with one line on stderr (the parent shows it) and the error's
    exit code."""
    from vmaccel.fusemount.mount import MountOptions, serve

    try:
        spec = json.loads(os.environ[ENV_MOUNT_REQUEST])
        overlay = spec["overlay_dir"]
        options = MountOptions(
            vm=spec["vm"],
            backup_id=spec["backup_id"],
            allow_other=spec["allow_other"],
            direct_io=spec["direct_io"],
            overlay_dir=Path(overlay) if overlay else None,
            keep_overlay=spec["keep_overlay"],
        )
        ctx = Context.from_env(
            os.environ, Path(spec["repo"]), passphrase=lambda: os.environ[ENV_PASSPHRASE]
        )
        with ctx.open() as r:
            serve(r, Path(spec["mountpoint"]), options)
    except (VmaccelError, OSError) as exc:
        err = exc if isinstance(exc, VmaccelError) else LocalIOError.from_os_error(exc, "mounting")
        sys.stderr.write(f"vmaccel: error: {err}\n")
        sys.exit(err.exit_code)

"""Instant recovery: run a VM straight from a backup over NFS, then move it or stop it.

``start``: mount the backup writable (guest writes go to a copy-on-write overlay, never to the
repository) in a detached mount process, export the VM's directory of that mount over NFS v3 to
the ESXi host only, mount the export on the host as a NAS datastore, create the VM from the
saved configuration with its disks on that datastore, and power it on. Nothing reads whole
disks, so the time to a running VM does not grow with disk size.

``migrate``: Storage vMotion to a production datastore while the VM runs; when the move has
completed the session ends itself (datastore, export, mount and overlay removed; the VM stays).

``stop``: power off and delete the VM (its disks are detached first, so nothing on the
export is deleted), remove the datastore, the export, the mount, and the overlay unless kept.

Each step is recorded before it is taken (:mod:`vmaccel.service.instantstate`), so ``stop``
cleans up after a crash or a ``kill -9`` at any point, and can be run again until it succeeds.
The moving parts on disk and in vSphere are named in the session record; nothing is guessed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vmaccel.plugin.nfsexport import ExportServer, ExportSettings
from vmaccel.plugin.registry import Registry
from vmaccel.service.backups import resolve_backup
from vmaccel.service.context import ENV_PASSPHRASE, Context
from vmaccel.service.instantstate import (
    InstantSession,
    check_name,
    forget,
    load,
    save,
    sessions,
)
from vmaccel.vocabulary.errors import (
    LocalIOError,
    MountError,
    RestoreError,
    UsageError,
    VmaccelError,
)

if TYPE_CHECKING:
    from vmaccel.catalog.index import ImageRow
    from vmaccel.plugin.vcenter.connection import VCenter

logger = logging.getLogger(__name__)

ENV_INSTANT_MOUNT = "VMACCEL_INSTANT_MOUNT"
_CHILD = "from vmaccel.service.instant import serve_child; serve_child()"


@dataclass(frozen=True)
class InstantSettings:
    """How the NFS export is reached. ``nfs_address``: the address of this machine that the
    ESXi host mounts from (None: the local address that routes to the host); ``client``: the
    one address allowed to mount (None: the host's name resolved); ports are TCP ports;
    ``bind_address``: where the NFS server listens. Read from ``VMACCEL_NFS_ADDRESS``,
    ``VMACCEL_NFS_CLIENT``, ``VMACCEL_NFS_PORT``, ``VMACCEL_NFS_MOUNT_PORT``,
    ``VMACCEL_NFS_BIND`` by :func:`settings_from`."""

    nfs_address: str | None = None
    client: str | None = None
    nfs_port: int = 2049
    mount_port: int = 20048
    bind_address: str = "0.0.0.0"  # noqa: S104 - ESXi hosts are elsewhere


def settings_from(env: Mapping[str, str]) -> InstantSettings:
    try:
        return InstantSettings(
            nfs_address=env.get("VMACCEL_NFS_ADDRESS") or None,
            client=env.get("VMACCEL_NFS_CLIENT") or None,
            nfs_port=int(env.get("VMACCEL_NFS_PORT") or 2049),
            mount_port=int(env.get("VMACCEL_NFS_MOUNT_PORT") or 20048),
            bind_address=env.get("VMACCEL_NFS_BIND") or "0.0.0.0",  # noqa: S104
        )
    except ValueError as exc:
        raise UsageError(f"VMACCEL_NFS_PORT / VMACCEL_NFS_MOUNT_PORT: {exc}") from None


@dataclass(frozen=True)
class StartRequest:
    """``backup``: any backup reference; ``name``: the new VM's (and session's) name, default
    ``<vm>-instant``; ``networks``: source network name -> target network name;
    ``datastore``: where the VM's home (configuration, swap, logs) goes, default the one the
    saved configuration names (the disks are on the NAS datastore either way); ``owner``:
    who asked (an API caller; recorded in the session, None from the CLI)."""

    backup: str
    vcenter: str
    host: str
    name: str | None = None
    datastore: str | None = None
    networks: Mapping[str, str] = field(default_factory=dict)
    power_on: bool = False
    owner: str | None = None


@dataclass(frozen=True)
class SessionView:
    """A session as ``instant list`` shows it; ``overlay_bytes``: allocated bytes of guest
    writes; ``mount_alive``: the mount process still runs."""

    session: InstantSession
    overlay_bytes: int
    mount_alive: bool


def instant_root(ctx: Context) -> Path:
    return ctx.config_dir / "instant"


def _server(ctx: Context) -> ExportServer:
    s = settings_from(ctx.env)
    return ExportServer(
        ExportSettings(instant_root(ctx) / "nfs", s.bind_address, s.nfs_port, s.mount_port)
    )


@contextlib.contextmanager
def _vcenter(ctx: Context, name: str) -> Iterator[VCenter]:
    from vmaccel.plugin.vcenter.connection import VCenter

    with VCenter(Registry(ctx.config_dir).endpoint(name, ctx.env)) as vc:
        yield vc


def start(ctx: Context, request: StartRequest) -> InstantSession:
    """Run the backup's VM from an NFS datastore on ``request.host`` (see the module
    docstring); returns the running session. On failure the session is left ``failed`` for
    ``stop`` to clean (the error is raised)."""
    root = instant_root(ctx)
    with ctx.open() as r:
        backup = resolve_backup(r, request.backup)
        images = r.images(backup)
        encrypted = r.config.encrypted
    if not backup.meta.config_xml or not backup.meta.api_version:
        raise UsageError(f"backup {backup.id} has no saved VM configuration to run it from")
    name = check_name(request.name or f"{backup.vm}-instant")
    if (root / name / "session.json").exists():
        raise UsageError(f"an instant session named {name!r} exists; stop it or pick --name")
    session = save(
        root,
        InstantSession(
            name,
            secrets.token_hex(4),
            str(ctx.require_repo()),
            backup.id,
            backup.vm,
            request.vcenter,
            request.host,
            time.time(),
            owner=request.owner,
        ),
    )
    try:
        with _vcenter(ctx, request.vcenter) as vc:
            session = _bring_up(ctx, vc, session, request, images, encrypted)
    except (VmaccelError, OSError) as exc:
        # The record on disk has every step taken so far (the local one may not).
        save(root, load(root, name).but(state="failed", error=str(exc)))
        raise
    return session


def _bring_up(
    ctx: Context,
    vc: VCenter,
    s: InstantSession,
    request: StartRequest,
    images: list[ImageRow],
    encrypted: bool,
) -> InstantSession:
    from vmaccel.plugin.vcenter import nasdatastore, vmcreate

    root = instant_root(ctx)
    host = nasdatastore.find_host(vc, request.host)
    if vmcreate.find_vm(vc, s.name) is not None:
        raise UsageError(f"vCenter has a VM named {s.name!r} already; pick another --name")
    settings = settings_from(ctx.env)
    nfs_address = settings.nfs_address or _route_to(vc.endpoint.hostname)
    client = settings.client or _resolve(request.host)
    s = save(root, s.but(mount_pid=_mount(ctx, s, encrypted), nfs_address=nfs_address))
    vmdir = _backup_dir(s.mountpoint(root))
    s = save(root, s.but(export_path=str(vmdir)))
    _server(ctx).add(vmdir, client)
    s = save(root, s.but(datastore=f"vmaccel-ir-{s.id}"))
    assert s.datastore is not None  # noqa: S101 - set just above; narrows the type
    nasdatastore.create_nas_datastore(vc, host, s.datastore, nfs_address, str(vmdir))
    disks = []
    for img in images:
        if img.meta.key is None:
            raise RestoreError(f"disk {img.disk} of backup {s.backup_id} has no saved device key")
        attach = f"[{s.datastore}] {_descriptor(vmdir, img.disk)}"
        disks.append(vmcreate.NewDisk(img.meta.key, attach))
    s = save(root, s.but(vm_created=True))
    backup_meta = _saved_config(ctx, s.backup_id)
    placement = vmcreate.Placement(datastore=request.datastore, host=request.host)
    blueprint = vmcreate.Blueprint(
        backup_meta[0], backup_meta[1], s.name, placement, request.networks, False, disks
    )
    created = vmcreate.create_vm(vc, blueprint)
    s = save(root, s.but(vm_moref=created.moref))
    if request.power_on:
        vmcreate.power_on(vc, created.moref)
    return save(root, s.but(state="running"))


def _saved_config(ctx: Context, backup_id: int) -> tuple[str, str]:
    with ctx.open() as r:
        meta = r.backup(backup_id).meta
    return str(meta.config_xml), str(meta.api_version)


def _descriptor(vmdir: Path, disk: str) -> str:
    from vmaccel.fusemount.tree import safe_name

    name = f"{safe_name(disk)}.vmdk"
    if not (vmdir / name).is_file():
        raise RestoreError(f"the mount shows no {name} for disk {disk}")
    return name


def _backup_dir(mountpoint: Path) -> Path:
    """The one backup directory of a mount limited to one backup (``<vm>/<time>``)."""
    found = [
        d for vm in mountpoint.iterdir() for d in vm.iterdir() if d.is_dir() and not d.is_symlink()
    ]
    if len(found) != 1:
        raise MountError(f"expected one backup directory under {mountpoint}, found {found}")
    return found[0]


def _route_to(host: str) -> str:
    """The local address that routes to ``host`` (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return str(s.getsockname()[0])
    except OSError as exc:
        raise UsageError(
            f"cannot tell which address reaches {host} ({exc}); set VMACCEL_NFS_ADDRESS"
        ) from None


def _resolve(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        raise UsageError(
            f"cannot resolve the host name {host!r} to the address allowed to "
            "mount the export; set VMACCEL_NFS_CLIENT"
        ) from None


def _mount(ctx: Context, s: InstantSession, encrypted: bool) -> int:
    """Start the detached writable mount of the session's backup; its pid once it is live."""
    from vmaccel.fusemount.mount import check_mountpoint, start_detached

    root = instant_root(ctx)
    mnt, overlay = s.mountpoint(root), s.overlay_dir(root)
    mnt.mkdir(parents=True, exist_ok=True)
    overlay.mkdir(parents=True, exist_ok=True)
    check_mountpoint(mnt)
    env = dict(ctx.env)
    env[ENV_INSTANT_MOUNT] = json.dumps(
        {
            "repo": s.repo,
            "mountpoint": str(mnt),
            "overlay": str(overlay),
            "vm": s.source_vm,
            "backup_id": s.backup_id,
        }
    )
    if encrypted:
        env[ENV_PASSPHRASE] = ctx.passphrase()
    return start_detached([sys.executable, "-c", _CHILD], mnt, env)


def serve_child() -> None:
    """The detached mount process of a session (see :func:`_mount`): a writable mount of one
    backup, without guest files, overlays kept at unmount (``stop`` decides about them)."""
    from vmaccel.fusemount.mount import MountOptions, serve

    try:
        spec = json.loads(os.environ[ENV_INSTANT_MOUNT])
        options = MountOptions(
            vm=spec["vm"],
            backup_id=spec["backup_id"],
            allow_other=True,
            guest_files=False,
            overlay_dir=Path(spec["overlay"]),
            keep_overlay=True,
            nfs_export=True,
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


def list_sessions(ctx: Context) -> list[SessionView]:
    root = instant_root(ctx)
    return [
        SessionView(s, _allocated(s.overlay_dir(root)), _alive(s.mount_pid)) for s in sessions(root)
    ]


def migrate(ctx: Context, name: str, datastore: str) -> InstantSession:
    """Move the running VM to ``datastore`` (Storage vMotion), then end the session: the
    VM stays, everything else of the session is removed. Returns the final record."""
    from vmaccel.plugin.vcenter import nasdatastore

    root = instant_root(ctx)
    s = load(root, name)
    if s.state not in ("running", "migrating") or s.vm_moref is None:
        raise UsageError(f"instant session {name} is {s.state}; only a running one can move")
    vm = s.vm_moref
    s = save(root, s.but(state="migrating", migrated_to=datastore))
    with _vcenter(ctx, s.vcenter) as vc:
        files = nasdatastore.relocate_disks(vc, vm, datastore)
        left = [f for f in files.values() if f.startswith(f"[{s.datastore}]")]
        if left:
            raise RestoreError(f"after the move, disks still on {s.datastore}: {left}")
        _teardown(ctx, vc, s, keep_vm=True, keep_overlay=False)
    return s


def stop(ctx: Context, name: str, keep_overlay: bool = False) -> InstantSession:
    """Undo whatever the session's record names (see the module docstring). Idempotent."""
    root = instant_root(ctx)
    s = save(root, load(root, name).but(state="stopping"))
    if s.datastore is None and not s.vm_created:
        _teardown(ctx, None, s, keep_vm=False, keep_overlay=keep_overlay)
        return s
    with _vcenter(ctx, s.vcenter) as vc:
        _teardown(ctx, vc, s, keep_vm=False, keep_overlay=keep_overlay)
    return s


def _teardown(
    ctx: Context, vc: VCenter | None, s: InstantSession, keep_vm: bool, keep_overlay: bool
) -> None:
    root = instant_root(ctx)
    if vc is not None:
        _remove_vsphere(vc, s, keep_vm)
    if s.export_path is not None:
        _server(ctx).remove_path(Path(s.export_path))
    _unmount(s.mountpoint(root), s.mount_pid)
    if not keep_overlay:
        shutil.rmtree(s.overlay_dir(root), ignore_errors=True)
    forget(root, s) if not keep_overlay else _forget_keeping_overlay(root, s)
    logger.info("instant session %s ended", s.name)


def _remove_vsphere(vc: VCenter, s: InstantSession, keep_vm: bool) -> None:
    from vmaccel.plugin.vcenter import nasdatastore, vmcreate

    moref = s.vm_moref
    if moref is None and s.vm_created:
        moref = vmcreate.find_vm(vc, s.name)
    alive = moref is not None and nasdatastore.vm_exists(vc, moref)
    if alive and s.migrated_to is not None and moref is not None:
        files = nasdatastore.disk_files(vc, moref).values()
        # a move that completed before a crash: the VM is on production storage, keep it
        keep_vm = keep_vm or all(f.startswith(f"[{s.migrated_to}]") for f in files)
    if not keep_vm and alive and moref is not None:
        vmcreate.power_off(vc, moref)
        nasdatastore.detach_disks(vc, moref)  # the disks are the backup's: never deleted
        vmcreate.destroy(vc, moref)
    if s.datastore is not None:
        host = nasdatastore.find_host(vc, s.host)
        nasdatastore.remove_datastore(vc, host, s.datastore)


def _unmount(mnt: Path, pid: int | None) -> None:
    from vmaccel.fusemount.mount import is_mounted, mounts, umount

    if mnt.absolute() in mounts():
        try:
            umount(mnt)
        except MountError:
            umount(mnt, lazy=True)  # a killed mount process leaves a dead mount behind
    if pid is not None and _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    if is_mounted(mnt):
        raise MountError(f"{mnt} is still mounted; unmount it and run stop again")


def _forget_keeping_overlay(root: Path, s: InstantSession) -> None:
    where = s.dir(root)
    for name in ("session.json", "session.json.tmp"):
        (where / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        s.mountpoint(root).rmdir()


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
            return False
    return True


def _allocated(path: Path) -> int:
    if not path.is_dir():
        return 0
    return sum(p.stat().st_blocks * 512 for p in path.glob("image-*.data"))

"""Choosing and opening the transport that reads one frozen snapshot disk from vCenter."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vmaccel.plugin.transport.file import FileSource
from vmaccel.plugin.transport.source import DiskSource
from vmaccel.plugin.vcenter.connection import VCenter
from vmaccel.plugin.vcenter.datastore import http_location
from vmaccel.plugin.vcenter.models import DiskRef, SnapshotRef, VmRef
from vmaccel.vocabulary.errors import TransportError, UsageError

# The HTTP (requests) and NBD (libnbd) transports are imported when chosen: a run over the
# file transport should not pay their start-up cost.

TRANSPORTS = ("auto", "nbd", "http", "file")


@dataclass(frozen=True)
class TransportConfig:
    """``kind`` auto|nbd|http|file. ``datastore_paths`` maps datastore names to local
    directories (NFS mounts) for ``file``. ``nbd_command`` is an argv template for an NBD
    server on stdin/stdout (e.g. nbdkit-vddk) with ``{file}`` (datastore path), ``{path}``
    (local path), ``{vm}``, ``{snapshot}``, ``{server}`` and ``{user}`` placeholders."""

    kind: str = "auto"
    datastore_paths: Mapping[str, Path] = field(default_factory=dict)
    nbd_command: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in TRANSPORTS:
            raise UsageError(f"unknown transport {self.kind!r}; use one of {', '.join(TRANSPORTS)}")
        if self.kind == "nbd" and not self.nbd_command:
            raise UsageError("--transport nbd needs --nbd-command (for example nbdkit-vddk)")


def local_path(cfg: TransportConfig, disk: DiskRef, flat: bool) -> Path | None:
    root = cfg.datastore_paths.get(disk.datastore)
    if root is None or "] " not in disk.file_name:
        return None
    rel = disk.file_name.split("] ", 1)[1]
    if flat and rel.endswith(".vmdk"):
        rel = rel[: -len(".vmdk")] + "-flat.vmdk"
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise TransportError(f"disk path {disk.file_name!r} escapes datastore directory {root}")
    return path


def choose(cfg: TransportConfig, disk: DiskRef) -> str:
    if cfg.kind != "auto":
        return cfg.kind
    if cfg.nbd_command:
        return "nbd"
    if disk.datastore in cfg.datastore_paths:
        return "file"
    return "http"


def open_disk(
    cfg: TransportConfig,
    vc: VCenter,
    vm: VmRef,
    snap: SnapshotRef,
    disk: DiskRef,
    ds_types: Mapping[str, str],
) -> tuple[str, DiskSource]:
    """(transport name, an open source) for one snapshot disk."""
    kind = choose(cfg, disk)
    if kind == "http":
        from vmaccel.plugin.transport.http import HttpSource

        loc = http_location(vc, disk, vm.datacenter, ds_types.get(disk.datastore, ""))
        return kind, HttpSource(loc, disk.capacity, renew=vc.renew_session)
    path = local_path(cfg, disk, flat=True)
    if kind == "file":
        if path is None:
            raise TransportError(
                f"datastore {disk.datastore!r} has no local path; pass --datastore-path "
                f"{disk.datastore}=DIR"
            )
        return kind, FileSource(path)
    assert cfg.nbd_command is not None  # noqa: S101 - narrows the type for mypy; TransportConfig requires it for nbd
    values = {
        "file": disk.file_name,
        "path": str(path or ""),
        "vm": vm.moref,
        "snapshot": snap.moref,
        "server": vc.endpoint.hostname,
        "user": vc.endpoint.user,
    }
    argv = [part.format(**values) for part in shlex.split(cfg.nbd_command)]
    from vmaccel.plugin.transport.nbd import NbdSource

    return kind, NbdSource(command=argv)

"""Choosing and opening the sink that writes one disk of a VM in vCenter.

The choice follows the read side (:func:`vmaccel.plugin.engine.transports.choose`): ``auto``
is ``nbd`` with an NBD command, ``file`` for a datastore with a local path, else ``http``.
``http`` writes a new disk as a whole stream (NFC upload); it cannot write ranges, so it is
refused for a rollback into an existing disk.
"""

from __future__ import annotations

import shlex

from vmaccel.plugin.engine.transports import TransportConfig, choose, local_path
from vmaccel.plugin.sink.file import FileSink
from vmaccel.plugin.sink.target import DiskSink
from vmaccel.plugin.vcenter.connection import VCenter
from vmaccel.plugin.vcenter.models import DiskRef
from vmaccel.vocabulary.errors import TransportError

HTTP_RANGES = (
    "the datastore HTTP interface replaces whole files and cannot write only the changed "
    "areas; roll back with --transport nbd (nbdkit-vddk in write mode) or --transport file "
    "(an NFS-mounted datastore, --datastore-path DS=DIR)"
)


def sink_kind(cfg: TransportConfig, disk: DiskRef, in_place: bool) -> str:
    """The transport that writes ``disk``; refuses ``http`` for ``in_place`` (before any
    change is made to the VM)."""
    kind = choose(cfg, disk)
    if kind == "http" and in_place:
        raise TransportError(f"{disk.label}: {HTTP_RANGES}")
    return kind


def open_sink(
    cfg: TransportConfig, vc: VCenter, vm_moref: str, disk: DiskRef, in_place: bool
) -> tuple[str, DiskSink]:
    """(transport name, an open ranged sink) for ``disk`` of VM ``vm_moref`` (powered off).

    ``http`` is not a ranged sink: callers stream a new disk through
    :mod:`vmaccel.plugin.sink.stream` instead; here it raises."""
    kind = sink_kind(cfg, disk, in_place)
    path = local_path(cfg, disk, flat=True)
    if kind == "file":
        if path is None:
            raise TransportError(
                f"datastore {disk.datastore!r} has no local path; pass --datastore-path "
                f"{disk.datastore}=DIR"
            )
        return kind, FileSink(path, disk.capacity)
    if kind == "nbd":
        assert cfg.nbd_command is not None  # noqa: S101 - TransportConfig requires it for nbd
        values = {
            "file": disk.file_name,
            "path": str(path or ""),
            "vm": vm_moref,
            "snapshot": "",
            "server": vc.endpoint.hostname,
            "user": vc.endpoint.user,
        }
        argv = [part.format(**values) for part in shlex.split(cfg.nbd_command)]
        from vmaccel.plugin.sink.nbd import NbdSink

        return kind, NbdSink(disk.capacity, command=argv)
    raise TransportError(f"{disk.label}: the {kind} transport cannot write ranges")

"""A new VM restored over ``http``: created by an NFC import (``ImportVApp``), each disk sent as
a streamOptimized VMDK generated from its image while it is uploaded (only the data grains,
compressed: bytes sent follow the allocated bytes). The lease is kept alive during uploads and
completed at the end; any failure aborts it, which makes vSphere delete the half-made VM."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from vmaccel.catalog.index import BackupRow, ImageRow
from vmaccel.catalog.repository import Repository
from vmaccel.vocabulary.errors import VmaccelError

if TYPE_CHECKING:
    from vmaccel.plugin.vcenter.connection import VCenter
    from vmaccel.plugin.vcenter.nfc import NfcImport
    from vmaccel.plugin.vcenter.vmcreate import CreatedVm
    from vmaccel.service.vmrestores import DiskWrite, Tracker, VmRestoreRequest

logger = logging.getLogger(__name__)


def uses_nfc(req: VmRestoreRequest) -> bool:
    """Whether a new VM's disks go over NFC: ``--transport http``, or ``auto`` with neither
    an NBD command nor a local datastore path given."""
    if req.transport == "http":
        return True
    return req.transport == "auto" and not req.nbd_command and not req.datastore_paths


def import_new_vm(
    vc: VCenter,
    r: Repository,
    row: BackupRow,
    images: list[ImageRow],
    req: VmRestoreRequest,
    name: str,
    track: Tracker,
) -> tuple[CreatedVm, tuple[DiskWrite, ...]]:
    """Create VM ``name`` from ``row``'s configuration with ``images`` as its disks, over
    NFC. Returns the VM (complete, powered off) and what each disk took."""
    from vmaccel.plugin.vcenter import nfc
    from vmaccel.service.vmrestores import blueprint

    imp = nfc.start_import(vc, blueprint(row, images, req, name))
    try:
        writes = tuple(
            _upload(vc, r, image, imp, url, target.file_name, track)
            for image, (_, url), (_, target) in zip(images, imp.urls, imp.vm.disks, strict=True)
        )
        nfc.complete(vc, imp.lease)
    except BaseException as exc:
        try:
            nfc.abort(vc, imp.lease, f"vmaccel restore failed: {exc}")
        except VmaccelError as err:
            logger.error("could not abort the import of %s: %s", name, err)
        raise
    return imp.vm, writes


def _upload(
    vc: VCenter,
    r: Repository,
    image: ImageRow,
    imp: NfcImport,
    url: str,
    target: str,
    track: Tracker,
) -> DiskWrite:
    import time

    from vmaccel.plugin.sink.http import upload_stream
    from vmaccel.plugin.sink.streamvmdk import StreamCounters, stream_optimized
    from vmaccel.plugin.vcenter import nfc
    from vmaccel.service.vmrestores import DiskWrite

    start = time.monotonic()
    counters = StreamCounters()
    with r.open_image(image) as reader:
        allocated = sum(n for _, n, data in reader.extents() if data)
        advance = track(f"{image.disk} -> {target}", allocated)
        done = [0]

        def grain(n: int) -> None:
            done[0] += n
            advance(n)

        def keepalive() -> None:
            nfc.progress(vc, imp.lease, done[0] * 100 // max(allocated, 1))

        pieces = stream_optimized(reader, target.rsplit("/", 1)[-1], counters, grain)
        sent = upload_stream(url, imp.cookie, imp.trust, pieces, keepalive)
    return DiskWrite(
        image.disk, target, "http", "new", image.size, sent, 0, time.monotonic() - start
    )

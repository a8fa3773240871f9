"""Locating disk files for the ``http`` transport (datastore ``/folder`` interface)."""

from __future__ import annotations

import re
import urllib.parse

from pyVmomi import vim

from vmaccel.plugin.vcenter.connection import VCenter
from vmaccel.plugin.vcenter.models import DiskRef, HttpDiskLocation
from vmaccel.vocabulary.errors import TransportError

_DELTA = re.compile(r"-\d{6}\.vmdk$")
_UNSUPPORTED = {"vsan": "vSAN", "VVOL": "vVols", "vvol": "vVols"}


def datastore_types(vc: VCenter) -> dict[str, str]:
    """datastore name -> summary.type (VMFS, NFS, NFS41, vsan, VVOL...)."""
    found = vc.all_of(vim.Datastore, ("name", "summary.type"))
    return {p["name"]: str(p.get("summary.type", "")) for p in found.values()}


def http_location(vc: VCenter, disk: DiskRef, datacenter: str, ds_type: str) -> HttpDiskLocation:
    """The ``-flat.vmdk`` URL of a snapshot's frozen disk. Refuses what HTTP cannot read."""
    if disk.backing != "flat" or _DELTA.search(disk.file_name):
        raise TransportError(
            f"{disk.label} ({disk.file_name}) is a {disk.backing} or delta disk; the http "
            "transport reads only flat base disks (remove older snapshots, or use --transport nbd)"
        )
    if ds_type in _UNSUPPORTED:
        raise TransportError(
            f"{disk.label} lives on {_UNSUPPORTED[ds_type]} datastore {disk.datastore!r}, which "
            "has no flat files; use --transport nbd with nbdkit-vddk"
        )
    if not disk.file_name.startswith("[") or "] " not in disk.file_name:
        raise TransportError(f"cannot parse the datastore path {disk.file_name!r}")
    datastore, path = disk.file_name[1:].split("] ", 1)
    flat = path[: -len(".vmdk")] + "-flat.vmdk" if path.endswith(".vmdk") else path
    query = urllib.parse.urlencode({"dcPath": datacenter, "dsName": datastore})
    url = f"https://{vc.endpoint.host}/folder/{urllib.parse.quote(flat)}?{query}"
    return HttpDiskLocation(url, vc.session_cookie, vc.endpoint.trust)

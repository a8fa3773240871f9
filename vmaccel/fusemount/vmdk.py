"""VMDK descriptors that present an image's bytes as a VMware flat disk.

A backup image is shown as ``<disk>.vmdk`` (this descriptor) next to ``<disk>-flat.vmdk`` (the
raw image bytes). We always write ``createType="vmfs"`` with the extent line
``RW <sectors> VMFS "<disk>-flat.vmdk"``: it is what ESXi uses for flat disks on NFS datastores,
and qemu-img reads it (qemu rejects an offset on a VMFS extent, so none is written). See
reference/vsphere.md section 5.

Units: the extent and geometry are in 512-byte sectors; an image whose size is not a multiple
of 512 is rounded up (the last sector reads short, which VMware and qemu treat as zeros).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SECTOR = 512
ADAPTER_TYPES = ("ide", "buslogic", "lsilogic", "legacyESX")
_UUID_HEX = re.compile(r"^[0-9a-fA-F]{32}$")


@dataclass(frozen=True)
class Geometry:
    """Advisory CHS geometry, as VMware-compatible generators compute it."""

    cylinders: int
    heads: int
    sectors: int


def geometry(size: int) -> Geometry:
    """< 1 GiB: 64 heads x 32 sectors; < 2 GiB: 128 x 32; else 255 x 63 (``size`` in bytes)."""
    heads, spt = (64, 32) if size < 1 << 30 else (128, 32) if size < 2 << 30 else (255, 63)
    return Geometry(max(1, sectors_of(size) // (heads * spt)), heads, spt)


def sectors_of(size: int) -> int:
    """The number of 512-byte sectors covering ``size`` bytes (rounded up)."""
    return (size + SECTOR - 1) // SECTOR


def ddb_uuid(value: str) -> str | None:
    """A disk uuid (any spacing/dashes, 32 hex digits) in VMware's ``ddb.uuid`` spelling."""
    digits = re.sub(r"[\s-]", "", value)
    if not _UUID_HEX.match(digits):
        return None
    pairs = [digits[i : i + 2].lower() for i in range(0, 32, 2)]
    return " ".join(pairs[:8]) + "-" + " ".join(pairs[8:])


def descriptor(flat_name: str, size: int, meta: Mapping[str, Any] | None = None) -> bytes:
    """The descriptor text (UTF-8) for a ``size``-byte flat extent named ``flat_name``.

    ``meta`` is the image's metadata; recognised keys (all optional): ``adapter_type`` (one of
    :data:`ADAPTER_TYPES`, default ``lsilogic``), ``uuid`` (the disk's ``backing.uuid``) and
    ``virtual_hw_version``. Unknown or malformed values fall back to the defaults.
    """
    meta = meta or {}
    adapter = str(meta.get("adapter_type", "lsilogic"))
    if adapter not in ADAPTER_TYPES:
        adapter = "lsilogic"
    geo = geometry(size)
    lines = [
        "# Disk DescriptorFile",
        "version=1",
        'encoding="UTF-8"',
        "CID=fffffffe",
        "parentCID=ffffffff",
        'createType="vmfs"',
        "",
        "# Extent description",
        f'RW {sectors_of(size)} VMFS "{_quote(flat_name)}"',
        "",
        "# The Disk Data Base",
        "#DDB",
        "",
        f'ddb.adapterType = "{adapter}"',
        f'ddb.geometry.cylinders = "{geo.cylinders}"',
        f'ddb.geometry.heads = "{geo.heads}"',
        f'ddb.geometry.sectors = "{geo.sectors}"',
    ]
    uuid = ddb_uuid(str(meta["uuid"])) if meta.get("uuid") else None
    if uuid:
        lines.append(f'ddb.uuid = "{uuid}"')
    hw = str(meta.get("virtual_hw_version", "4"))
    lines.append(f'ddb.virtualHWVersion = "{hw if hw.isdigit() else "4"}"')
    return ("\n".join(lines) + "\n").encode()


def _quote(name: str) -> str:
    # The descriptor has no escape for a double quote; our flat names never hold one, but a
    # disk name from the catalog might.
    return name.replace('"', "_")

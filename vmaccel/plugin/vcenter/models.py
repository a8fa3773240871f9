"""Frozen dataclasses that cross the boundary of ``vmaccel.plugin.vcenter``. No vim object
inside."""

from __future__ import annotations

from dataclasses import dataclass, field

from vmaccel.vocabulary.disknames import DiskIdentity, name_for_key


@dataclass(frozen=True)
class TlsTrust:
    """How a vCenter's certificate is trusted: a pinned SHA-256 thumbprint (64 lowercase hex
    digits, no colons) or a CA bundle file. Exactly one is set."""

    thumbprint: str | None = None
    ca_file: str | None = None

    def __post_init__(self) -> None:
        if (self.thumbprint is None) == (self.ca_file is None):
            raise ValueError("TlsTrust needs exactly one of a thumbprint or a CA file")


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to connect. ``host`` may carry a ``:port``."""

    host: str
    user: str
    password: str = field(repr=False)
    trust: TlsTrust

    @property
    def hostname(self) -> str:
        return self.host.rsplit(":", 1)[0] if self._has_port else self.host

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1]) if self._has_port else 443

    @property
    def _has_port(self) -> bool:
        return ":" in self.host and self.host.rsplit(":", 1)[1].isdigit()


@dataclass(frozen=True)
class SnapshotRef:
    moref: str
    name: str
    description: str


@dataclass(frozen=True)
class DiskRef:
    """One virtual disk as seen in a VM's or a snapshot's configuration. Sizes in bytes."""

    key: int
    label: str
    capacity: int
    file_name: str
    uuid: str | None
    change_id: str | None
    disk_mode: str
    backing: str
    datastore: str
    unit: str | None = None  # controller unit, e.g. "scsi0:1" (None: controller not seen)

    @property
    def independent(self) -> bool:
        return self.disk_mode.startswith("independent")

    @property
    def physical_rdm(self) -> bool:
        return self.backing == "rdm-physical"

    @property
    def name(self) -> str:
        """A stable, file-system-safe name for the disk within its VM (from its key)."""
        return name_for_key(self.key)

    @property
    def identity(self) -> DiskIdentity:
        """Every name this disk answers to (see :mod:`vmaccel.vocabulary.disknames`)."""
        return DiskIdentity(self.name, self.key, self.label, self.unit)


@dataclass(frozen=True)
class VmRef:
    moref: str
    name: str
    instance_uuid: str
    folder: str
    power_state: str
    template: bool
    cbt_enabled: bool
    snapshots: tuple[SnapshotRef, ...]
    disks: tuple[DiskRef, ...]
    datacenter: str
    host: str = ""  # moref of the ESXi host running it ("" when vCenter does not say)


@dataclass(frozen=True)
class BackupSnapshot:
    """The snapshot a backup reads from, with its frozen disks and saved configuration."""

    snapshot: SnapshotRef
    quiesced: bool
    disks: tuple[DiskRef, ...]
    config_xml: str
    api_version: str


@dataclass(frozen=True)
class HttpDiskLocation:
    """A disk file readable by HTTP Range requests on the datastore ``/folder`` interface."""

    url: str
    cookie: str = field(repr=False)
    trust: TlsTrust


@dataclass(frozen=True)
class TagInfo:
    """One vSphere tag: its id (an opaque URN), its name within its category."""

    id: str
    name: str
    description: str = ""


@dataclass(frozen=True)
class TagCategory:
    """One tag category with its tags sorted by name; ``cardinality`` is ``SINGLE`` (a VM
    carries at most one of its tags) or ``MULTIPLE``; ``associable_types`` empty means any."""

    id: str
    name: str
    description: str
    cardinality: str
    associable_types: tuple[str, ...]
    tags: tuple[TagInfo, ...]

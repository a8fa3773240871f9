"""What the bed's control API reports about restores and snapshots: VM configurations, VM
creations and removals, uploads (datastore `/folder` and NFC), and snapshot creations and
removals.

Plain frozen records parsed from the control API's JSON (`BedControl.vm_config`, `vm_events`,
`uploads`, `snapshot_events` in bed.py). Units: bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

VmEventKind = Literal["created", "destroyed", "unregistered"]
UploadKind = Literal["folder", "nfc"]
SnapshotEventKind = Literal["created", "removed"]


@dataclass(frozen=True)
class DeviceConfig:
    """One virtual device of a VM. `type` is the vim type name without its package
    ("VirtualDisk", "ParaVirtualSCSIController", "VirtualVmxnet3"); fields that do not apply to
    the device are empty (0, "", None)."""

    type: str
    key: int
    controller_key: int
    unit_number: int | None
    label: str
    capacity: int  # disks
    file_name: str  # file backings: "[LocalDS_0] vm/vm.vmdk"
    path: Path | None  # disks: the local -flat.vmdk
    uuid: str  # disks: backing uuid
    thin: bool | None  # disks
    disk_mode: str  # disks
    network: str  # NICs: network name
    mac_address: str  # NICs
    address_type: str  # NICs: "generated", "manual", "assigned"
    bus_number: int | None  # controllers
    shared_bus: str  # SCSI controllers

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DeviceConfig:
        return cls(
            type=d["type"], key=d["key"], controller_key=d["controller_key"],
            unit_number=d.get("unit_number"), label=d.get("label", ""),
            capacity=d.get("capacity", 0), file_name=d.get("file_name", ""),
            path=Path(d["path"]) if d.get("path") else None, uuid=d.get("uuid", ""),
            thin=d.get("thin"), disk_mode=d.get("disk_mode", ""), network=d.get("network", ""),
            mac_address=d.get("mac_address", ""), address_type=d.get("address_type", ""),
            bus_number=d.get("bus_number"), shared_bus=d.get("shared_bus", ""))


@dataclass(frozen=True)
class VmConfig:
    """A VM's configuration as the bed holds it (GET /vmaccel-test/vm-config)."""

    name: str
    moref: str
    power_state: str
    uuid: str
    instance_uuid: str
    guest_id: str
    version: str
    firmware: str
    num_cpu: int
    num_cores_per_socket: int
    memory_mb: int
    change_tracking_enabled: bool
    vm_path_name: str
    datastores: tuple[str, ...]
    extra_config: MappingProxyType[str, str]
    devices: tuple[DeviceConfig, ...]

    @property
    def disks(self) -> tuple[DeviceConfig, ...]:
        return tuple(d for d in self.devices if d.type == "VirtualDisk")

    @property
    def nics(self) -> tuple[DeviceConfig, ...]:
        return tuple(d for d in self.devices if d.mac_address)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VmConfig:
        return cls(
            name=d["name"], moref=d["moref"], power_state=d["power_state"], uuid=d["uuid"],
            instance_uuid=d["instance_uuid"], guest_id=d["guest_id"], version=d["version"],
            firmware=d["firmware"], num_cpu=d["num_cpu"],
            num_cores_per_socket=d["num_cores_per_socket"], memory_mb=d["memory_mb"],
            change_tracking_enabled=d["change_tracking_enabled"], vm_path_name=d["vm_path_name"],
            datastores=tuple(d["datastores"]),
            extra_config=MappingProxyType(dict(d["extra_config"])),
            devices=tuple(DeviceConfig.from_json(x) for x in d["devices"]))


@dataclass(frozen=True)
class VmEvent:
    """A VM entering or leaving the inventory; `seq` counts from 1 in the bed's order."""

    seq: int
    event: VmEventKind
    method: str  # SOAP method that caused it ("CreateVM_Task", "ImportVApp", "Destroy_Task",
    #             "UnregisterVM", "HttpNfcLeaseAbort", "lease timeout", "bed cleanup")
    name: str
    moref: str
    time: str  # RFC 3339, UTC

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VmEvent:
        return cls(d["seq"], d["event"], d["method"], d["name"], d["moref"], d["time"])


@dataclass(frozen=True)
class Upload:
    """One upload the bed received: a datastore `/folder` PUT/POST or an NFC lease PUT/POST.

    bytes_received: body bytes read from the client (what went over the wire);
    data_bytes: bytes of data stored (non-hole) in the resulting file;
    size: the resulting file's size (for NFC disks: the disk's capacity);
    status: the HTTP status answered; error: why it failed ("" on success).
    """

    seq: int
    kind: UploadKind
    method: str
    file_name: str  # datastore path of the file written ("[LocalDS_0] vm/vm-flat.vmdk")
    path: Path
    bytes_received: int
    data_bytes: int
    size: int
    status: int
    error: str
    vm: str  # NFC: the VM's moref
    disk: int  # NFC: the disk's device key (0 for other files)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Upload:
        return cls(d["seq"], d["kind"], d["method"], d["file_name"], Path(d["path"]),
                   d["bytes_received"], d["data_bytes"], d["size"], d["status"], d["error"],
                   d.get("vm", ""), d.get("disk", 0))


@dataclass(frozen=True)
class SnapshotEvent:
    """A snapshot the bed created or removed; `seq` counts from 1 in the order the bed applied
    the changes, so replaying by seq gives the snapshots open at every moment.

    "created" is logged once the snapshot exists, before its CreateSnapshot_Task reports
    success; "removed" once it is gone (RemoveSnapshot_Task, RemoveAllSnapshots_Task, or its VM
    destroyed or unregistered), before the removing call returns. A removal repeats the VM and
    datastores its creation recorded. `datastores`: of the VM's disks when the snapshot was
    taken, sorted; `time`: when the bed logged it (UTC, microseconds).
    """

    seq: int
    event: SnapshotEventKind
    vm: str  # the VM's name
    vm_moref: str  # "vm-57"
    snapshot: str  # the snapshot's name
    snapshot_moref: str  # "snapshot-123"
    datastores: tuple[str, ...]
    time: datetime

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SnapshotEvent:
        return cls(d["seq"], d["event"], d["vm"], d["vm_moref"], d["snapshot"],
                   d["snapshot_moref"], tuple(d["datastores"]),
                   datetime.fromisoformat(d["time"]))

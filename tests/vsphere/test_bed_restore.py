"""The bed's restore features, through pyVmomi: VMs created with real disks, QueryChangedDiskAreas
on powered-off VMs, /folder uploads stored as real files, NFC (ImportVApp) uploads of
streamOptimized VMDKs decoded into real disks, and the control API that reports them."""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pyVmomi import vim, vmodl

from testbed.vsphere import vimclient as vc
from testbed.vsphere.bed import VmInfo, VsphereBed, verified_session

pytestmark = pytest.mark.vsphere

MiB = 1 << 20
DS = "LocalDS_0"


@pytest.fixture
def si(vsphere_bed: VsphereBed) -> Iterator[vim.ServiceInstance]:
    with vc.connect(vsphere_bed) as si:
        yield si


def cluster_pool(si: vim.ServiceInstance) -> vim.ResourcePool:
    """The root resource pool of the bed's cluster (DC0_C0)."""
    datacenter = si.content.rootFolder.childEntity[0]
    clusters = [c for c in datacenter.hostFolder.childEntity
                if isinstance(c, vim.ClusterComputeResource)]
    pool: vim.ResourcePool = vc.props(si, clusters[0], "resourcePool")["resourcePool"]
    return pool


def vm_folder(si: vim.ServiceInstance) -> vim.Folder:
    folder: vim.Folder = si.content.rootFolder.childEntity[0].vmFolder
    return folder


def controller_spec() -> vim.vm.device.VirtualDeviceSpec:
    return vim.vm.device.VirtualDeviceSpec(
        operation="add", device=vim.vm.device.ParaVirtualSCSIController(
            key=-100, busNumber=0, sharedBus="noSharing"))


def disk_spec(key: int, unit: int, capacity: int, file_name: str = f"[{DS}]",
              create: bool = True) -> vim.vm.device.VirtualDeviceSpec:
    backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
        fileName=file_name, diskMode="persistent", thinProvisioned=True)
    disk = vim.vm.device.VirtualDisk(key=key, controllerKey=-100, unitNumber=unit,
                                     capacityInBytes=capacity, capacityInKB=capacity // 1024,
                                     backing=backing)
    return vim.vm.device.VirtualDeviceSpec(operation="add", device=disk,
                                           fileOperation="create" if create else None)


def nic_spec(network: str) -> vim.vm.device.VirtualDeviceSpec:
    backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=network)
    return vim.vm.device.VirtualDeviceSpec(
        operation="add", device=vim.vm.device.VirtualVmxnet3(key=-300, backing=backing))


def vm_spec(name: str, devices: list[vim.vm.device.VirtualDeviceSpec],
            cbt: bool = False) -> vim.vm.ConfigSpec:
    return vim.vm.ConfigSpec(
        name=name, guestId="otherGuest64", numCPUs=2, memoryMB=256, firmware="efi",
        changeTrackingEnabled=cbt, files=vim.vm.FileInfo(vmPathName=f"[{DS}]"),
        deviceChange=devices, extraConfig=[vim.option.OptionValue(key="vmaccel.test", value="1")])


def create_vm(si: vim.ServiceInstance, pool: vim.ResourcePool,
              spec: vim.vm.ConfigSpec) -> vim.VirtualMachine:
    vm: vim.VirtualMachine = vc.wait_task(si, vm_folder(si).CreateVM_Task(config=spec, pool=pool))
    return vm


def seed_disk(bed: VsphereBed, rel: str, data: bytes, uuid: str) -> str:
    """Put a vmfs descriptor and its -flat file on the datastore; returns the datastore path."""
    descriptor = bed.datastore_dir / rel
    descriptor.parent.mkdir(parents=True, exist_ok=True)
    flat = descriptor.with_name(descriptor.stem + "-flat.vmdk")
    flat.write_bytes(data)
    descriptor.write_text(
        '# Disk DescriptorFile\nversion=1\ncreateType="vmfs"\n'
        f'RW {len(data) // 512} VMFS "{flat.name}"\nddb.uuid = "{uuid}"\n')
    return f"[{DS}] {rel}"


def test_created_vm_gets_real_thin_disks_and_adopts_attached_ones(
        vsphere_bed: VsphereBed, si: vim.ServiceInstance) -> None:
    control = vsphere_bed.control
    seeded = random.Random(1).randbytes(4 * MiB)
    ddb = "60 00 c2 91 22 33 44 55-66 77 88 99 aa bb cc dd"
    attached = seed_disk(vsphere_bed, "seed1/seed1.vmdk", seeded, ddb)
    since = control.vm_events()[-1].seq if control.vm_events() else 0
    spec = vm_spec("restore-create", [controller_spec(), disk_spec(-101, 0, 8 * MiB),
                                      disk_spec(-102, 1, 0, attached, create=False),
                                      nic_spec("VM Network")], cbt=True)
    vm = create_vm(si, cluster_pool(si), spec)

    (info,) = [v for v in control.vms() if v.name == "restore-create"]
    created, adopted = info.disks
    assert created.key > 0 and adopted.key > 0
    assert (created.capacity, adopted.capacity) == (8 * MiB, 4 * MiB)
    assert created.path.stat().st_size == 8 * MiB and created.path.stat().st_blocks == 0
    assert adopted.uuid == "6000c291-2233-4455-6677-8899aabbccdd"
    assert adopted.path.read_bytes() == seeded

    config = control.vm_config("restore-create")
    assert (config.num_cpu, config.memory_mb, config.firmware) == (2, 256, "efi")
    assert config.extra_config["vmaccel.test"] == "1" and config.change_tracking_enabled
    (nic,) = config.nics
    assert nic.network == "VM Network" and nic.type == "VirtualVmxnet3" and nic.mac_address
    controllers = {d.key for d in config.devices if d.type == "ParaVirtualSCSIController"}
    assert {d.controller_key for d in config.disks} <= controllers

    # The new disks behave like the bed's own: guest writes, /folder reads, snapshots and CBT.
    s1 = vc.create_snapshot(si, vm, "s1")
    (d1, _) = vc.snapshot_disks(si, s1)
    control.guest_write("restore-create", created.key, 3 * MiB + 5, b"\xab" * 100)
    s2 = vc.create_snapshot(si, vm, "s2")
    extents, _ = vc.changed_extents(vm, s2, created.key, created.capacity, d1.backing.changeId)
    assert extents == [(3 * MiB, 64 << 10)]
    got = vc.read_range(vsphere_bed, si, created.file_name.replace(".vmdk", "-flat.vmdk"),
                        3 * MiB, 200)
    assert got.content == b"\0" * 5 + b"\xab" * 100 + b"\0" * 95

    vc.wait_task(si, vm.Destroy_Task())
    assert not created.path.exists() and not adopted.path.exists()
    events = [(e.event, e.method, e.name) for e in control.vm_events(since)]
    assert events == [("created", "CreateVM_Task", "restore-create"),
                      ("destroyed", "Destroy_Task", "restore-create")]


def test_disk_added_by_reconfigure_is_real(vsphere_bed: VsphereBed, bed_vm: VmInfo,
                                           si: vim.ServiceInstance) -> None:
    vm = vc.vm_by_moref(si, bed_vm.moref)
    devices = vc.props(si, vm, "config.hardware.device")["config.hardware.device"]
    (first,) = [d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]
    spec = disk_spec(-1, 5, 2 * MiB)
    spec.device.controllerKey = first.controllerKey
    vc.wait_task(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=[spec])))
    disks = vsphere_bed.control.vms()
    (info,) = [v for v in disks if v.moref == bed_vm.moref]
    added = info.disks[-1]
    assert added.capacity == 2 * MiB and added.path.stat().st_size == 2 * MiB

    devices = vc.props(si, vm, "config.hardware.device")["config.hardware.device"]
    (disk,) = [d for d in devices if getattr(d, "key", None) == added.key]
    disk.capacityInBytes, disk.capacityInKB = 4 * MiB, 4 * MiB // 1024
    grow = vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)
    vc.wait_task(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=[grow])))
    assert added.path.stat().st_size == 4 * MiB  # extended like ESXi: the new area a hole


def test_create_refuses_unknown_networks_and_taken_names(vsphere_bed: VsphereBed,
                                                         si: vim.ServiceInstance) -> None:
    spec = vm_spec("restore-badnet", [nic_spec("no such network")])
    with pytest.raises(vim.fault.InvalidDeviceSpec):
        create_vm(si, cluster_pool(si), spec)
    assert "restore-badnet" not in {v.name for v in vsphere_bed.control.vms()}
    taken = vsphere_bed.control.vms()[0].name  # every model VM is in the datacenter's vmFolder
    with pytest.raises(vim.fault.DuplicateName):
        create_vm(si, cluster_pool(si), vm_spec(taken, []))
    with pytest.raises(vim.fault.DuplicateName):
        cluster_pool(si).ImportVApp(spec=vim.vm.VmImportSpec(configSpec=vm_spec(taken, [])),
                                    folder=vm_folder(si))


def test_qcda_answers_the_current_state_of_a_powered_off_vm(
        vsphere_bed: VsphereBed, bed_vm: VmInfo, si: vim.ServiceInstance,
        tmp_path: Path) -> None:
    control = vsphere_bed.control
    image = tmp_path / "a.raw"
    image.write_bytes(random.Random(2).randbytes(4 * MiB))
    disk = control.attach_disk(bed_vm.name, image)
    vm = vc.vm_by_moref(si, bed_vm.moref)
    vc.enable_cbt(si, vm)
    backup = vc.create_snapshot(si, vm, "backup")
    (d,) = vc.snapshot_disks(si, backup)
    change_id = d.backing.changeId
    vc.remove_snapshot(si, backup)
    control.guest_write(bed_vm.name, disk.key, MiB + 1, b"x")  # after the backup
    vc.create_snapshot(si, vm, "later")                       # another generation
    control.guest_write(bed_vm.name, disk.key, 3 * MiB, b"y" * 70000)

    with pytest.raises(vmodl.fault.InvalidArgument):  # powered on: a snapshot is required
        vm.QueryChangedDiskAreas(snapshot=None, deviceKey=disk.key, startOffset=0,
                                 changeId=change_id)
    control.set_power(bed_vm.name, "poweredOff")
    expected = [(MiB, 64 << 10), (3 * MiB, 128 << 10)]
    current, _ = vc.changed_extents(vm, None, disk.key, disk.capacity, change_id)
    assert current == expected
    now = vc.create_snapshot(si, vm, "now")  # a snapshot of the powered-off VM: the same answer
    assert vc.changed_extents(vm, now, disk.key, disk.capacity, change_id)[0] == expected

    vc.enable_cbt(si, vm, enabled=False)  # a CBT reset: every earlier changeId is refused
    vc.enable_cbt(si, vm)
    with pytest.raises(vim.fault.FileFault) as err:
        vm.QueryChangedDiskAreas(snapshot=None, deviceKey=disk.key, startOffset=0,
                                 changeId=change_id)
    assert "Error caused by file" in err.value.msg
    with pytest.raises(vim.fault.FileFault):
        vm.QueryChangedDiskAreas(snapshot=now, deviceKey=disk.key, startOffset=0,
                                 changeId=change_id)


def put(bed: VsphereBed, file_name: str, data: bytes, method: str = "PUT",
        headers: dict[str, str] | None = None) -> requests.Response:
    session = verified_session(bed.ca_file)
    return session.request(method, vc.folder_url(bed, file_name), data=data, timeout=60,
                           headers=headers)


def test_folder_upload_replaces_the_whole_file_thin(vsphere_bed: VsphereBed,
                                                   si: vim.ServiceInstance) -> None:
    control = vsphere_bed.control
    rng = random.Random(3)
    data = rng.randbytes(MiB) + bytes(MiB) + rng.randbytes(MiB // 2) + bytes(MiB // 2)
    flat = f"[{DS}] up1/up1-flat.vmdk"
    since = len(control.uploads())
    assert put(vsphere_bed, flat, b"old bytes").status_code == 201
    assert put(vsphere_bed, flat, b"x", method="POST").status_code == 409  # POST never replaces
    # A range header is ignored: the body becomes the whole file, as on ESXi.
    resp = put(vsphere_bed, flat, data, headers={"Content-Range": f"bytes 10-20/{len(data)}"})
    assert resp.status_code == 200
    descriptor = ('# Disk DescriptorFile\nversion=1\ncreateType="vmfs"\n'
                  f'RW {len(data) // 512} VMFS "up1-flat.vmdk"\n')
    assert put(vsphere_bed, f"[{DS}] up1/up1.vmdk", descriptor.encode()).status_code == 201

    spec = vm_spec("restore-folder", [controller_spec(),
                                      disk_spec(-101, 0, 0, f"[{DS}] up1/up1.vmdk", create=False)])
    vm = create_vm(si, cluster_pool(si), spec)
    (disk,) = next(v for v in control.vms() if v.name == "restore-folder").disks
    assert disk.capacity == len(data)
    assert disk.path.read_bytes() == data
    assert disk.path.stat().st_blocks * 512 <= 2 * MiB  # the zero MiB stayed a hole
    assert vc.read_range(vsphere_bed, si, flat, MiB - 4, 8).content == data[MiB - 4:MiB + 4]

    records = control.uploads(since)
    assert [(u.method, u.status) for u in records] == [
        ("PUT", 201), ("POST", 409), ("PUT", 200), ("PUT", 201)]
    assert records[2].bytes_received == len(data) and records[2].size == len(data)
    assert records[2].data_bytes == 2 * MiB and records[2].file_name == flat
    vc.wait_task(si, vm.Destroy_Task())


def stream_vmdk(tmp_path: Path, raw: bytes) -> Path:
    """A streamOptimized VMDK of raw, made by qemu-img (a real encoder)."""
    src, out = tmp_path / "src.raw", tmp_path / "src.vmdk"
    src.write_bytes(raw)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o",
                    "subformat=streamOptimized,adapter_type=lsilogic", str(src), str(out)],
                   check=True, capture_output=True)
    return out


def import_vm(si: vim.ServiceInstance, name: str, capacity: int) -> vim.HttpNfcLease:
    spec = vim.vm.VmImportSpec(
        configSpec=vm_spec(name, [controller_spec(), disk_spec(-101, 0, capacity)]))
    lease: vim.HttpNfcLease = cluster_pool(si).ImportVApp(spec=spec, folder=vm_folder(si))
    assert vc.props(si, lease, "state")["state"] == "ready"
    return lease


def upload_url(bed: VsphereBed, si: vim.ServiceInstance, lease: vim.HttpNfcLease) -> str:
    (device,) = [d for d in vc.props(si, lease, "info")["info"].deviceUrl if d.disk]
    url: str = device.url.replace("*", bed.host)
    return url


def nfc_put(bed: VsphereBed, url: str, body: bytes) -> requests.Response:
    return verified_session(bed.ca_file).put(
        url, data=body, timeout=60, headers={"Content-Type": "application/x-vnd.vmware-streamVmdk"})


def test_nfc_import_decodes_a_stream_optimized_vmdk(vsphere_bed: VsphereBed,
                                                    si: vim.ServiceInstance,
                                                    tmp_path: Path) -> None:
    control = vsphere_bed.control
    rng = random.Random(4)
    raw = bytearray(5 * MiB + 1536)  # not a whole number of 64 KiB grains
    raw[:70000] = rng.randbytes(70000)
    raw[3 * MiB:3 * MiB + 4096] = b"\x01" * 4096
    raw[-512:] = rng.randbytes(512)
    vmdk = stream_vmdk(tmp_path, bytes(raw))
    since = len(control.uploads())

    lease = import_vm(si, "restore-nfc", len(raw))
    resp = nfc_put(vsphere_bed, upload_url(vsphere_bed, si, lease), vmdk.read_bytes())
    assert resp.status_code == 200, resp.text
    lease.HttpNfcLeaseProgress(percent=100)
    lease.HttpNfcLeaseComplete()

    (disk,) = next(v for v in control.vms() if v.name == "restore-nfc").disks
    assert disk.capacity == len(raw) and disk.path.read_bytes() == bytes(raw)
    assert disk.path.stat().st_blocks * 512 <= 3 * MiB  # holes stayed holes
    (upload,) = control.uploads(since)
    assert (upload.kind, upload.status, upload.disk) == ("nfc", 200, disk.key)
    assert upload.bytes_received == vmdk.stat().st_size
    assert upload.data_bytes == 2 * MiB + 1536  # the 1 MiB blocks holding data
    vm = vc.vm_by_moref(si, next(v for v in control.vms() if v.name == "restore-nfc").moref)
    vc.wait_task(si, vm.Destroy_Task())


def test_nfc_refuses_what_is_not_stream_optimized(vsphere_bed: VsphereBed,
                                                  si: vim.ServiceInstance) -> None:
    lease = import_vm(si, "restore-nfc-bad", MiB)
    resp = nfc_put(vsphere_bed, upload_url(vsphere_bed, si, lease), bytes(4096))
    assert resp.status_code == 400 and "KDMV" in resp.text
    lease.HttpNfcLeaseAbort()


def test_abort_and_timeout_remove_the_half_made_vm(vsphere_bed: VsphereBed,
                                                   si: vim.ServiceInstance,
                                                   tmp_path: Path) -> None:
    control = vsphere_bed.control
    since = control.vm_events()[-1].seq
    aborted = import_vm(si, "restore-abort", MiB)
    (disk,) = next(v for v in control.vms() if v.name == "restore-abort").disks
    aborted.HttpNfcLeaseAbort()
    assert "restore-abort" not in {v.name for v in control.vms()}
    assert not disk.path.exists()

    control.set_lease_timeout(0.3)
    try:
        expired = import_vm(si, "restore-expire", MiB)
        url = upload_url(vsphere_bed, si, expired)
        deadline = time.monotonic() + 10
        while "restore-expire" in {v.name for v in control.vms()}:
            assert time.monotonic() < deadline, "the lease never timed out"
            time.sleep(0.1)
    finally:
        control.set_lease_timeout(300)
    late = nfc_put(vsphere_bed, url, stream_vmdk(tmp_path, bytes(MiB)).read_bytes())
    assert late.status_code == 404
    with pytest.raises(vim.fault.Timedout):
        expired.HttpNfcLeaseComplete()
    events = [(e.event, e.method, e.name) for e in control.vm_events(since)]
    assert events == [("created", "ImportVApp", "restore-abort"),
                      ("destroyed", "HttpNfcLeaseAbort", "restore-abort"),
                      ("created", "ImportVApp", "restore-expire"),
                      ("destroyed", "lease timeout", "restore-expire")]

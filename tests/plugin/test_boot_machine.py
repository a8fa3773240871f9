"""The pure parts of boot tests: the machine from the saved configuration, qemu's command line,
and the judging of console text (real SeaBIOS, OVMF and Linux lines)."""

from __future__ import annotations

import re
from pathlib import Path

from vmaccel.plugin.boot.console import DEFAULT_MARKER, LogTail, judge
from vmaccel.plugin.boot.machine import (
    MAX_MEMORY_MIB,
    MachineSpec,
    SavedMachine,
    Workspace,
    order_disks,
    parse_config,
    qemu_argv,
)

# What pyVmomi's SoapAdapter.Serialize writes for a VirtualMachineConfigInfo (trimmed).
CONFIG = """<obj versionId="8.0.2.0" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
 xmlns="urn:vim25" xsi:type="VirtualMachineConfigInfo"><name>vm1</name>
<hardware><numCPU>2</numCPU><memoryMB>{memory}</memoryMB>
<device xsi:type="VirtualIDEController"><key>200</key></device>
<device xsi:type="VirtualDisk"><key>2001</key><controllerKey>1000</controllerKey>
<unitNumber>1</unitNumber><capacityInKB>1</capacityInKB></device>
<device xsi:type="VirtualDisk"><key>2000</key><controllerKey>1000</controllerKey>
<unitNumber>0</unitNumber><capacityInKB>1</capacityInKB></device>
<device xsi:type="VirtualDisk"><key>3000</key><controllerKey>200</controllerKey>
<unitNumber>0</unitNumber><capacityInKB>1</capacityInKB></device>
</hardware><bootOptions>{boot}</bootOptions><firmware>{firmware}</firmware></obj>"""
BOOT_2001 = (
    '<bootOrder xsi:type="VirtualMachineBootOptionsBootableDiskDevice">'
    "<deviceKey>2001</deviceKey></bootOrder>"
)

SEABIOS_NO_DISK = """Booting from Hard Disk...
Boot failed: not a bootable disk

Booting from Floppy...
Boot failed: could not read the boot disk

No bootable device.
"""
OVMF_NO_DISK = (
    '\x1b[2J\x1b[01;01HBdsDxe: failed to load Boot0001 "UEFI QEMU HARDDISK QM00001 " from '
    "PciRoot(0x0)/Pci(0x1F,0x2)/Sata(0x0,0xFFFF,0x0): Not Found\r\n"
    'BdsDxe: loading Boot0002 "EFI Internal Shell" from Fv(7CB8BDC9)/FvFile(7C04A583)\r\n'
    'BdsDxe: starting Boot0002 "EFI Internal Shell" from Fv(7CB8BDC9)/FvFile(7C04A583)\r\n'
)
PANIC = (
    "[    1.304623] Kernel panic - not syncing: VFS: Unable to mount root fs on "
    "unknown-block(0,0)\n[    1.305766] CPU: 0 PID: 1 Comm: swapper/0 Not tainted\n"
)
MARKER = re.compile(DEFAULT_MARKER)


def test_the_saved_config_gives_firmware_memory_cpus_and_boot_order() -> None:
    saved = parse_config(CONFIG.format(memory=2048, boot=BOOT_2001, firmware="efi"))
    # bootOrder's disk first, then by controller key (IDE 200 before SCSI 1000) and unit
    assert saved == SavedMachine("efi", 2048, 2, (2001, 3000, 2000))


def test_without_boot_order_disks_follow_controller_and_unit() -> None:
    saved = parse_config(CONFIG.format(memory=512, boot="", firmware="bios"))
    assert (saved.firmware, saved.disk_order) == ("bios", (3000, 2000, 2001))


def test_standalone_and_unreadable_configs_boot_bios_as_stored() -> None:
    assert parse_config(None) == SavedMachine()
    assert parse_config("<ConfigInfo/>") == SavedMachine()
    assert parse_config("not xml <") == SavedMachine()


def test_disks_are_ordered_by_the_saved_order_then_as_stored() -> None:
    a, b, c, d = (Path(n) for n in "abcd")
    ordered = order_disks([(2000, a), (None, b), (2001, c), (9, d)], (2001, 2000))
    assert ordered == (c, a, b, d)


def test_memory_is_clamped_and_cpus_bounded() -> None:
    spec = MachineSpec.of([Path("x")], SavedMachine("bios", 256 * 1024, 64, ()))
    assert (spec.memory_mib, spec.cpus) == (MAX_MEMORY_MIB, 4)


def test_the_command_line_has_no_network_and_boots_disks_in_order(tmp_path: Path) -> None:
    disks = tuple(tmp_path / f"d{i},x.raw" for i in range(7))
    spec = MachineSpec(disks, "efi", 1024, 2)
    argv = qemu_argv("qemu", spec, Workspace(tmp_path), "tcg", 7, Path("/ovmf/CODE.fd"))
    line = " ".join(argv)
    assert "-nic none" in line and "-nodefaults" in line and "-no-shutdown" in line
    assert f"file={tmp_path}/d0,,x.raw,format=raw,if=none,id=disk0,snapshot=on" in argv
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    disks_on = [d for d in devices if d.startswith("ide-hd")]
    assert disks_on[0] == "ide-hd,drive=disk0,bus=ide.0,bootindex=0"
    assert disks_on[6] == "ide-hd,drive=disk6,bus=ahci1.0,bootindex=6"  # 7th: a 2nd controller
    assert "ahci,id=ahci1" in devices
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/ovmf/CODE.fd" in argv
    assert f"if=pflash,format=raw,unit=1,file={tmp_path}/efivars.fd" in argv
    assert "q35,accel=tcg" in argv and "socket,id=qmp,fd=7" in argv


def test_seabios_without_a_bootable_disk() -> None:
    found = judge("", SEABIOS_NO_DISK, MARKER)
    assert found is not None and found.outcome == "no bootable disk"
    assert found.detail == (
        "Boot failed: not a bootable disk; Boot failed: could not read the boot disk; "
        "No bootable device."
    )


def test_ovmf_falling_back_to_its_shell_means_no_bootable_disk() -> None:
    found = judge(OVMF_NO_DISK, "", MARKER)
    assert found is not None and found.outcome == "no bootable disk"
    assert found.detail.startswith('BdsDxe: failed to load Boot0001 "UEFI QEMU HARDDISK')


def test_a_kernel_panic_names_its_cause() -> None:
    found = judge("Booting from Hard Disk...\n" + PANIC, "", MARKER)
    assert found is not None and found.outcome == "kernel panic"
    assert found.detail == (
        "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"
    )


def test_the_marker_wins_and_nothing_decides_early() -> None:
    assert judge("Debian GNU/Linux 12 host ttyS0\n\nhost login: " + PANIC, "", MARKER) == (
        judge("host login:", "", MARKER)
    )
    booting = "[    0.000000] Linux version 6.1.0\n"
    assert judge(booting, "Booting from Hard Disk...", MARKER) is None


def test_the_log_tail_reads_what_was_appended(tmp_path: Path) -> None:
    tail = LogTail(tmp_path / "serial.log", limit=8)
    assert tail.read() == ""
    (tmp_path / "serial.log").write_bytes(b"abc\xff")
    assert tail.read() == "abc\ufffd"
    with open(tmp_path / "serial.log", "ab") as f:
        f.write(b"defghij")
    assert tail.read() == "\ufffddefghij"[-8:]

"""The machine a restore point boots in: its shape from the saved VM configuration, and the
qemu command line that builds it. Pure: no process is started here.

From the saved configuration (``snapshot.config`` as SOAP XML, see
:attr:`~vmaccel.catalog.index.meta.BackupMeta.config_xml`) come the firmware (``bios`` or
``efi``), the memory (MiB), the number of vCPUs and the boot order of the disks: the disks
``bootOptions.bootOrder`` names, in its order, then the others by controller key and unit
number (IDE, then SCSI, SATA, NVMe: vSphere's own order of controller keys). Standalone
backups have no configuration: BIOS, :data:`DEFAULT_MEMORY_MIB`, one vCPU, the disks as
stored.

The machine is qemu's ``q35`` with every disk on an AHCI (SATA) port, the first disk in boot
order first: AHCI is what guests of any age have a driver for (vSphere's LSI and PVSCSI
controllers have no qemu equivalent), and q35's built-in controller has six ports; each
further six get an AHCI controller of their own. No network device, no USB; a standard VGA
(the screenshot), the serial console in a file, the firmware's debug port (0x402, SeaBIOS and
OVMF write there) in another, QMP on an inherited socket. ``-no-shutdown``: when the guest powers
off, qemu stays, so the screenshot can still be taken.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Firmware = Literal["bios", "efi"]
DEFAULT_MEMORY_MIB = 512
MAX_MEMORY_MIB = 8192  # a boot test needs no more; a 256 GiB VM must not take the host's RAM
MIN_MEMORY_MIB = 256
MAX_CPUS = 4
AHCI_PORTS = 6
OVMF_PAIRS = (  # (code, vars template): Debian's ovmf package, 4 MiB flash first
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
)


@dataclass(frozen=True)
class SavedMachine:
    """What the saved configuration says: ``firmware``; ``memory_mib`` and ``cpus`` (None
    when unset); ``disk_order``: device keys of the virtual disks, first to boot first."""

    firmware: Firmware = "bios"
    memory_mib: int | None = None
    cpus: int | None = None
    disk_order: tuple[int, ...] = ()


@dataclass(frozen=True)
class MachineSpec:
    """One boot: ``disks`` (image files, first to boot first; opened read-only, guest writes
    go to a temporary overlay), ``firmware``, ``memory_mib`` (MiB, clamped to
    [:data:`MIN_MEMORY_MIB`, :data:`MAX_MEMORY_MIB`]), ``cpus`` (1..:data:`MAX_CPUS`)."""

    disks: tuple[Path, ...]
    firmware: Firmware = "bios"
    memory_mib: int = DEFAULT_MEMORY_MIB
    cpus: int = 1

    @classmethod
    def of(cls, disks: Sequence[Path], saved: SavedMachine) -> MachineSpec:
        memory = saved.memory_mib or DEFAULT_MEMORY_MIB
        return cls(
            tuple(disks),
            saved.firmware,
            min(max(memory, MIN_MEMORY_MIB), MAX_MEMORY_MIB),
            min(max(saved.cpus or 1, 1), MAX_CPUS),
        )


@dataclass(frozen=True)
class Workspace:
    """The temporary files of one boot (all inside one private directory): ``serial`` and
    ``debug`` logs, ``vars`` (the writable copy of OVMF's variable store,
    UEFI only) and ``screenshot`` (its suffix added by the runner)."""

    root: Path

    @property
    def serial(self) -> Path:
        return self.root / "serial.log"

    @property
    def debug(self) -> Path:
        return self.root / "firmware.log"

    @property
    def vars(self) -> Path:
        return self.root / "efivars.fd"

    @property
    def screenshot(self) -> Path:
        return self.root / "screen"


def parse_config(config_xml: str | None) -> SavedMachine:
    """The boot-relevant shape of a saved configuration (None or unparsable: the defaults of
    a standalone backup). Element names are matched without their XML namespace."""
    if not config_xml:
        return SavedMachine()
    try:
        root = ET.fromstring(config_xml)  # noqa: S314 - our own saved config (see the import)
    except ET.ParseError:
        return SavedMachine()
    firmware: Firmware = "efi" if _text(root, "firmware") == "efi" else "bios"
    hardware = _child(root, "hardware")
    memory = _int(_text(hardware, "memoryMB")) if hardware is not None else None
    cpus = _int(_text(hardware, "numCPU")) if hardware is not None else None
    return SavedMachine(firmware, memory, cpus, _disk_order(root, hardware))


def _disk_order(root: ET.Element, hardware: ET.Element | None) -> tuple[int, ...]:
    disks: list[tuple[int, int, int]] = []  # (controller key, unit, device key)
    for dev in hardware or ():
        if _local(dev.tag) != "device" or not _xsi_type(dev).endswith("VirtualDisk"):
            continue
        key = _int(_text(dev, "key"))
        if key is not None:
            ctl, unit = _int(_text(dev, "controllerKey")), _int(_text(dev, "unitNumber"))
            disks.append((ctl if ctl is not None else 1 << 30, unit or 0, key))
    known = {key for _, _, key in disks}
    boot = _child(root, "bootOptions")
    first: list[int] = []
    for entry in boot or ():
        if _local(entry.tag) == "bootOrder" and _xsi_type(entry).endswith("BootableDiskDevice"):
            key = _int(_text(entry, "deviceKey"))
            if key in known and key not in first:
                first.append(key)
    rest = [key for _, _, key in sorted(disks) if key not in first]
    return (*first, *rest)


def order_disks(disks: Sequence[tuple[int | None, Path]], order: Sequence[int]) -> tuple[Path, ...]:
    """``disks`` ((device key or None, file), as stored) in boot order: those ``order`` names
    in its order, then the others as stored."""
    rank = {key: i for i, key in enumerate(order)}
    indexed = sorted(
        enumerate(disks),
        key=lambda item: (rank.get(item[1][0], len(rank)) if item[1][0] is not None
                          else len(rank), item[0]),
    )  # fmt: skip
    return tuple(path for _, (_, path) in indexed)


def find_ovmf(pairs: Sequence[tuple[str, str]] = OVMF_PAIRS) -> tuple[Path, Path] | None:
    """OVMF's (code, variable template) files, or None when no pair is installed."""
    for code, template in pairs:
        if Path(code).is_file() and Path(template).is_file():
            return Path(code), Path(template)
    return None


def qemu_argv(
    binary: str,
    spec: MachineSpec,
    ws: Workspace,
    accel: str,
    qmp_fd: int,
    ovmf_code: Path | None = None,
) -> list[str]:
    """The qemu command line for ``spec`` (``accel``: ``kvm`` or ``tcg``; ``qmp_fd``: the
    inherited descriptor of qemu's end of the QMP socket pair). UEFI needs ``ovmf_code`` and
    ``ws.vars`` (copied from the template by the caller)."""
    argv = [
        binary, "-machine", f"q35,accel={accel}", "-m", str(spec.memory_mib),
        "-smp", str(spec.cpus), "-nodefaults", "-no-user-config", "-no-shutdown",
        "-display", "none", "-vga", "std", "-nic", "none",
        "-chardev", f"file,id=serial0,path={ws.serial}", "-serial", "chardev:serial0",
        "-chardev", f"file,id=fwdebug,path={ws.debug}",
        "-device", "isa-debugcon,iobase=0x402,chardev=fwdebug",
        "-chardev", f"socket,id=qmp,fd={qmp_fd}", "-mon", "chardev=qmp,mode=control",
    ]  # fmt: skip
    if spec.firmware == "efi":
        if ovmf_code is None:
            raise ValueError("UEFI needs OVMF's code file")
        argv += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_escape(ovmf_code)}",
            "-drive", f"if=pflash,format=raw,unit=1,file={_escape(ws.vars)}",
        ]  # fmt: skip
    for i, disk in enumerate(spec.disks):
        controller, port = divmod(i, AHCI_PORTS)
        bus = f"ide.{port}" if controller == 0 else f"ahci{controller}.{port}"
        if controller and not port:
            argv += ["-device", f"ahci,id=ahci{controller}"]
        argv += [
            "-drive",
            f"file={_escape(disk)},format=raw,if=none,id=disk{i},snapshot=on",
            "-device", f"ide-hd,drive=disk{i},bus={bus},bootindex={i}",
        ]  # fmt: skip
    return argv


def _escape(path: Path) -> str:
    return str(path).replace(",", ",,")  # qemu's option syntax doubles a literal comma


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xsi_type(el: ET.Element) -> str:
    for name, value in el.attrib.items():
        if _local(name) == "type":
            return value.rsplit(":", 1)[-1]
    return ""


def _child(el: ET.Element | None, name: str) -> ET.Element | None:
    for c in el if el is not None else ():
        if _local(c.tag) == name:
            return c
    return None


def _text(el: ET.Element | None, name: str) -> str | None:
    c = _child(el, name)
    return c.text.strip() if c is not None and c.text else None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None

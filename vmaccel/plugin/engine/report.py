"""What a backup run reports: per disk, per VM, per run. Frozen; JSON via ``to_dict``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from vmaccel.vocabulary.units import format_bytes, format_duration


@dataclass(frozen=True)
class DiskReport:
    """One disk of one VM. Byte counts: ``bytes_read`` through the transport, ``new_bytes``
    of chunks not stored before (logical), ``stored_bytes`` of those after compression."""

    disk: str
    mode: str
    reason: str
    size: int
    bytes_read: int = 0
    new_bytes: int = 0
    stored_bytes: int = 0
    hole_bytes: int = 0
    duration: float = 0.0
    change_id: str | None = None
    error: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def read_fraction(self) -> float:
        """Bytes read / disk size: the accelerator optimization (lower is better)."""
        return self.bytes_read / self.size if self.size else 0.0


@dataclass(frozen=True)
class VmReport:
    vm: str
    backup_id: int | None
    disks: tuple[DiskReport, ...]
    duration: float
    consistency: str = "crash-consistent"
    error: str | None = None
    warnings: tuple[str, ...] = ()
    catalog_seconds: float = 0.0  # filling the file catalog, after the data is safe
    exit_code: int = 0  # of the error that failed this VM (VmaccelError.exit_code), else 0

    @property
    def ok(self) -> bool:
        return self.error is None and all(d.ok for d in self.disks)

    def to_json(self) -> str:
        """This report as JSON text (every field; :meth:`from_json` reads it back equal)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> VmReport:
        """The report :meth:`to_json` wrote; fields it does not know are ignored (a newer
        writer), fields it lacks take their defaults (an older one). ValueError when the
        text is not such a report."""
        try:
            raw = json.loads(text)
            disks = tuple(
                DiskReport(**_known(DiskReport, d, ("warnings",))) for d in raw.get("disks", ())
            )
            return cls(**{**_known(cls, raw, ("warnings",)), "disks": disks})
        except (TypeError, AttributeError) as exc:
            raise ValueError(f"not a VM report: {exc}") from exc


def _known(kind: type, raw: dict[str, Any], tuples: tuple[str, ...]) -> dict[str, Any]:
    """The items of ``raw`` that are fields of the dataclass ``kind`` (lists in ``tuples``
    become tuples, as the frozen dataclasses hold them)."""
    names = {f.name for f in fields(kind)}
    return {k: tuple(v) if k in tuples else v for k, v in raw.items() if k in names}


@dataclass(frozen=True)
class RunReport:
    vms: tuple[VmReport, ...]

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.vms)

    @property
    def exit_code(self) -> int:
        """0 when every VM succeeded; when every VM failed for errors of one exit code (vCenter
        unreachable: 11, login refused: 12, ...), that code; otherwise 1."""
        failed = [v for v in self.vms if not v.ok]
        if not failed:
            return 0
        codes = {v.exit_code or 1 for v in failed}
        return codes.pop() if len(failed) == len(self.vms) and len(codes) == 1 else 1

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for vm, raw in zip(self.vms, out["vms"], strict=True):
            raw["ok"] = vm.ok
            for disk, d in zip(vm.disks, raw["disks"], strict=True):
                d["ok"] = disk.ok
                d["read_fraction"] = round(disk.read_fraction, 6)
        out["ok"] = self.ok
        out["exit_code"] = self.exit_code
        return out

    def summary(self) -> list[str]:
        lines = []
        for vm in self.vms:
            state = "ok" if vm.ok else f"FAILED: {vm.error or 'see disks'}"
            lines.append(
                f"{vm.vm}: backup {vm.backup_id} {state} "
                f"({format_duration(vm.duration)}, {vm.consistency})"
            )
            for d in vm.disks:
                lines.append(
                    f"  {d.disk}: {d.mode} ({d.reason}); read {format_bytes(d.bytes_read)} of "
                    f"{format_bytes(d.size)} ({d.read_fraction:.1%}), "
                    f"new {format_bytes(d.new_bytes)}, stored {format_bytes(d.stored_bytes)}, "
                    f"{format_duration(d.duration)}" + (f"; ERROR {d.error}" if d.error else "")
                )
                lines.extend(f"    warning: {w}" for w in d.warnings)
            lines.extend(f"  warning: {w}" for w in vm.warnings)
        return lines

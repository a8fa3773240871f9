"""Typed metadata of backups and images: what the ``meta`` and ``stats`` JSON columns hold.

The stored format is a JSON object per row (and the same object in each manifest). Parsing
is tolerant, so every repository written so far stays readable: a known key with a value of
the wrong type (or ``null``), and every unknown key, is kept verbatim in ``extra`` and written
back unchanged by ``to_json``; a missing key is ``None``. So ``from_json(d).to_json() == d``
for every JSON object ``d``, and a newer version's keys survive an older one's rewrite.

New fields are optional (default ``None``), never required: add one here, never rename one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from vmaccel.catalog.anomaly import Verdict
from vmaccel.catalog.bootcheck import BootCheck

_T = TypeVar("_T")
_Parser = Callable[[Any], Any]  # raises TypeError/ValueError/KeyError for a value it refuses


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(v)
    return v


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(v)
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(v)
    return v


def _parse_fields(
    doc: Mapping[str, Any], parsers: Mapping[str, _Parser]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(known fields that parsed, everything else verbatim) of one JSON object."""
    known: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for k, v in doc.items():
        parse = parsers.get(k)
        if parse is None or v is None:
            extra[k] = v
            continue
        try:
            known[k] = parse(v)
        except (TypeError, ValueError, KeyError):
            extra[k] = v
    return known, extra


def _dump_fields(record: Any, dumpers: Mapping[str, Callable[[Any], Any]]) -> dict[str, Any]:
    """The JSON object of ``record``: its ``extra`` plus every field that is not None."""
    doc = dict(record.extra)
    for f in fields(record):
        value = getattr(record, f.name)
        if f.name != "extra" and value is not None:
            doc[f.name] = dumpers.get(f.name, _same)(value)
    return doc


def _same(v: _T) -> _T:
    return v


@dataclass(frozen=True)
class Baseline:
    """What an image records about its disk so the next backup can trust CBT (DESIGN
    invariant 3): VM instance uuid, disk key, backing uuid, capacity in bytes, and the
    changeId (``"<uuid part>/<sequence>"``) the image was taken at."""

    instance_uuid: str
    disk_key: int
    backing_uuid: str | None
    capacity: int
    change_id: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "instance_uuid": self.instance_uuid,
            "disk_key": self.disk_key,
            "backing_uuid": self.backing_uuid,
            "capacity": self.capacity,
            "change_id": self.change_id,
        }

    @classmethod
    def from_json(cls, raw: Any) -> Baseline:
        """Raises TypeError/ValueError/KeyError when ``raw`` is no complete baseline."""
        if not isinstance(raw, Mapping):
            raise TypeError(raw)
        backing, change = raw.get("backing_uuid"), raw.get("change_id")
        return cls(
            str(raw["instance_uuid"]),
            int(raw["disk_key"]),
            None if backing is None else str(backing),
            int(raw["capacity"]),
            None if change is None else str(change),
        )


@dataclass(frozen=True)
class VolumeAllocation:
    """One volume of a disk as the backup's allocation map saw it (``used_bytes`` in bytes;
    ``whole_reason`` says why the volume was read whole, when it was)."""

    volume: str
    fstype: str | None
    state: str
    used_bytes: int
    whole_reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "volume": self.volume,
            "fstype": self.fstype,
            "state": self.state,
            "used_bytes": self.used_bytes,
            "whole_reason": self.whole_reason,
        }

    @classmethod
    def from_json(cls, raw: Any) -> VolumeAllocation:
        if not isinstance(raw, Mapping) or set(raw) != _ALLOCATION_KEYS:
            raise TypeError(raw)  # kept verbatim rather than rewritten with other keys
        fstype, why = raw["fstype"], raw["whole_reason"]
        return cls(
            _str(raw["volume"]),
            None if fstype is None else _str(fstype),
            _str(raw["state"]),
            _int(raw["used_bytes"]),
            None if why is None else _str(why),
        )


_ALLOCATION_KEYS = frozenset(f.name for f in fields(VolumeAllocation))


def _allocation(raw: Any) -> tuple[VolumeAllocation, ...]:
    if not isinstance(raw, list):
        raise TypeError(raw)
    return tuple(VolumeAllocation.from_json(v) for v in raw)


@dataclass(frozen=True)
class BackupMeta:
    """The metadata of one backup. vCenter backups: VM identity (``instance_uuid``,
    ``moref``, ``folder``, ``power_state``), the snapshot taken, its ``consistency``
    (``application-consistent`` or ``crash-consistent``), the saved configuration
    (``config_xml``) and the ``api_version`` it was read with. Standalone backups: ``kind``
    ``"standalone"`` and the ``source`` read. ``file_catalog`` is True once the file catalog
    of every image is stored. ``verdict`` is the anomaly verdict computed at the end of the
    backup (:mod:`vmaccel.catalog.anomaly`); ``acked`` the UTC time (ISO 8601) someone
    acknowledged a suspicious verdict (``backups ack``), after which prune may remove it.
    ``boot`` is the outcome of the last boot test (``verify --boot``;
    :mod:`vmaccel.catalog.bootcheck`)."""

    instance_uuid: str | None = None
    moref: str | None = None
    folder: str | None = None
    power_state: str | None = None
    snapshot: str | None = None
    consistency: str | None = None
    config_xml: str | None = None
    api_version: str | None = None
    kind: str | None = None
    source: str | None = None
    file_catalog: bool | None = None
    verdict: Verdict | None = None
    acked: str | None = None
    boot: BootCheck | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def protected(self) -> bool:
        """Whether prune must keep this backup: suspicious and not acknowledged."""
        return self.verdict is not None and self.verdict.suspicious and not self.acked

    @property
    def catalogued(self) -> bool:
        return bool(self.file_catalog)

    def to_json(self) -> dict[str, Any]:
        return _dump_fields(self, {"verdict": lambda v: v.to_json(), "boot": lambda b: b.to_json()})

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> BackupMeta:
        known, extra = _parse_fields(doc, _BACKUP_PARSERS)
        return cls(**known, extra=extra)


_BACKUP_PARSERS: dict[str, _Parser] = {
    **{f.name: _str for f in fields(BackupMeta) if f.name != "extra"},
    "file_catalog": _bool,
    "verdict": Verdict.from_json,
    "boot": BootCheck.from_json,
}


@dataclass(frozen=True)
class ImageMeta:
    """The metadata of one image: the invariant-3 ``baseline``; the disk's ``label`` ("Hard
    disk 1"), device ``key`` and ``unit`` ("scsi0:1") when stored; its backing ``file_name``;
    the ``transport`` and ``source`` it was read through; the backup ``mode`` (full,
    incremental, rescan) and its ``reason``; whether free blocks were left out
    (``skip_free``) and the ``allocation`` summary that decided it; the VMDK descriptor's
    ``adapter_type``."""

    baseline: Baseline | None = None
    label: str | None = None
    key: int | None = None
    unit: str | None = None
    file_name: str | None = None
    transport: str | None = None
    source: str | None = None
    mode: str | None = None
    reason: str | None = None
    skip_free: bool | None = None
    allocation: tuple[VolumeAllocation, ...] | None = None
    adapter_type: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def skips_free(self) -> bool:
        """Whether the image left the guest's free blocks out (holes where the disk may hold
        data). Images from before the ``skip_free`` flag tell by their allocation summary."""
        if self.skip_free is not None:
            return self.skip_free
        return bool(self.allocation or self.extra.get("allocation"))

    def to_json(self) -> dict[str, Any]:
        return _dump_fields(
            self,
            {
                "baseline": lambda b: b.to_json(),
                "allocation": lambda a: [v.to_json() for v in a],
            },
        )

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ImageMeta:
        known, extra = _parse_fields(doc, _IMAGE_PARSERS)
        return cls(**known, extra=extra)


_IMAGE_PARSERS: dict[str, _Parser] = {
    **{f.name: _str for f in fields(ImageMeta) if f.name != "extra"},
    "baseline": Baseline.from_json,
    "key": _int,
    "skip_free": _bool,
    "allocation": _allocation,
}


@dataclass(frozen=True)
class ImageStats:
    """What writing an image did. Byte counts are logical (before compression) unless named
    ``stored``; ``stored_bytes`` is what the image added to the repository.
    ``incompressible_blocks`` counts the new chunks whose stored payload is at least
    ``INCOMPRESSIBLE`` of their raw size (the entropy proxy); None for images written before
    it was counted (and then absent from the JSON)."""

    bytes_written: int = 0
    zero_blocks: int = 0
    dedup_blocks: int = 0
    new_chunks: int = 0
    new_bytes: int = 0
    stored_bytes: int = 0
    holes_punched: int = 0
    incompressible_blocks: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def to_json(self) -> dict[str, Any]:
        doc = {**self.extra, **{k: getattr(self, k) for k in _STATS_KEYS}}
        if self.incompressible_blocks is not None:
            doc["incompressible_blocks"] = self.incompressible_blocks
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ImageStats:
        """Missing counters are 0 (and written back as 0); a missing
        ``incompressible_blocks`` is None."""
        parsers = dict.fromkeys((*_STATS_KEYS, "incompressible_blocks"), _int)
        known, extra = _parse_fields(doc, parsers)
        return cls(**known, extra=extra)


INCOMPRESSIBLE = 0.97  # stored / raw size at or above which a new chunk "did not compress"
_STATS_KEYS = tuple(
    f.name for f in fields(ImageStats) if f.name not in ("extra", "incompressible_blocks")
)

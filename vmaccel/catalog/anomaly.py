"""Ransomware and anomaly signals of one backup: a verdict from figures the backup already has.

Pure: plain figures in, a :class:`Verdict` out, no I/O. The inputs cost no extra read: each
disk's :class:`~vmaccel.catalog.index.meta.ImageStats` (what writing the image did), the same
figures of the VM's earlier backups (the baseline), and the file diff of each catalogued
volume against the previous backup (:mod:`vmaccel.catalog.filediff`).

Signals, each judged ``normal``, ``unusual`` or ``suspicious`` with a reason that carries its
figures (thresholds: :class:`Thresholds`):

- ``new bytes``: the bytes of new chunks against the baseline's median and MAD (a robust z
  score; the MAD has a floor so a VM whose backups are all alike does not fire on noise);
- ``compressibility``: stored / new bytes of the new chunks, and the share of new blocks that
  did not compress (the entropy proxy, ``incompressible_blocks``; absent in old images);
- ``dedup``: the share of written blocks dedup found, collapsing towards zero;
- ``holes``: blocks punched (mass deletion) against the baseline;
- per volume: the share of files modified, renamed and removed, files with an extension the
  volume did not have before, and known ransom-note names (:data:`RANSOM_NOTES`);
- ``allocation`` (the volume-metadata signal, :func:`_allocation_signals`): the allocation
  summary the backup's allocation map already made of each volume, against the previous
  backup's: a filesystem no longer recognised, a volume's used bytes changed wholesale, or
  many new bytes while no filesystem's allocation moved (data rewritten in place, as
  encrypt-in-place ransomware does).

Every signal that fires is a :class:`Finding` (kind, volume, figure, names). A finding that an
*accepted pattern* covers (``backups ack --pattern``; :mod:`vmaccel.catalog.anomalypatterns`)
stays in the reasons as ``acknowledged pattern N: ...`` but adds nothing to the level.

History signals need ``Thresholds.learning`` earlier backups of the VM: before that the VM is
*learning* and only the file signals (which need no history) are judged. A disk's level is its
worst signal's, raised to ``suspicious`` when ``escalate`` or more signals are unusual at once
(independent signals agreeing); the backup's level is its worst disk's.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from vmaccel.catalog.anomalyfindings import (
    LEVELS,
    RANSOM_NOTES,
    Acceptor,
    Finding,
    Level,
    parse_level,
    parse_strings,
)

if TYPE_CHECKING:  # meta stores a Verdict: a runtime import would be circular
    from vmaccel.catalog.index.meta import ImageStats, VolumeAllocation

MIB = 1 << 20


@dataclass(frozen=True)
class Thresholds:
    """Every threshold of the verdict. Shares are fractions (0..1), bytes are bytes, robust
    scores are in MADs (scaled by 1.4826 so one MAD is one standard deviation of a normal
    distribution). A signal fires ``unusual`` at its first threshold, ``suspicious`` at its
    second."""

    learning: int = 5  # earlier backups of the VM before history signals are judged
    z_unusual: float = 6.0
    z_suspicious: float = 12.0
    mad_floor_share: float = 0.25  # MAD at least this share of the median...
    mad_floor_bytes: int = 4 * MIB  # ...and at least this many bytes
    min_new_bytes: int = 8 * MIB  # below this, byte signals stay normal (too little to judge)
    incompressible_unusual: float = 0.5  # share of new blocks that did not compress
    incompressible_rise: float = 0.3  # ...above the baseline median share by this much
    stored_ratio_unusual: float = 0.9  # stored / new bytes...
    stored_ratio_rise: float = 0.25  # ...above the baseline median ratio by this much
    min_holes: int = 64  # MAD floor of blocks punched (mass deletion)
    dedup_collapse: float = 0.25  # dedup share below this fraction of the baseline median
    min_files: int = 20  # volumes with fewer files have no file-share signals
    changed_unusual: float = 0.2  # share of files modified + renamed + removed
    changed_suspicious: float = 0.5
    new_ext_unusual: float = 0.05  # share of files that carry an extension new to the volume
    new_ext_suspicious: float = 0.15
    ransom_notes: frozenset[str] = RANSOM_NOTES
    escalate: int = 2  # this many unusual signals of one disk make it suspicious
    rewrite_share: float = 0.1  # new bytes >= this share of the filesystems' used bytes...
    rewrite_alloc_slack: float = 0.01  # ...while their used bytes moved <= this share of them
    alloc_change_unusual: float = 0.5  # a volume's used bytes changed by this share
    min_alloc_bytes: int = 16 * MIB  # volumes using less have no wholesale-change signal
    pattern_tolerance: float = 1.5  # an accepted pattern covers figures up to this factor


@dataclass(frozen=True)
class VolumeChanges:
    """The file diff of one volume against the previous backup, as counts of files and
    links (directories left out). ``files`` counts the older listing's regular files;
    ``new_extension_files`` the added or renamed files whose
    extension the older listing did not have; ``ransom_notes`` the added names found in
    :attr:`Thresholds.ransom_notes` (at most a few, for the reason text)."""

    volume: str
    files: int
    modified: int
    renamed: int
    removed: int
    added: int
    new_extension_files: int
    new_extensions: tuple[str, ...]
    ransom_notes: tuple[str, ...]


@dataclass(frozen=True)
class DiskSignals:
    """One disk of one backup: its stats, the same disk's stats in earlier backups of the VM
    (oldest first; the baseline), and its volumes' file changes (empty when not catalogued)."""

    disk: str
    stats: ImageStats
    history: tuple[ImageStats, ...] = ()
    volumes: tuple[VolumeChanges, ...] = ()
    allocation: tuple[VolumeAllocation, ...] | None = None  # this image's allocation summary
    previous_allocation: tuple[VolumeAllocation, ...] | None = None  # the previous image's


@dataclass(frozen=True)
class DiskVerdict:
    """One disk's level, its reasons (the :attr:`Finding.text` of every finding) and the
    findings themselves (empty in verdicts stored before findings were)."""

    disk: str
    level: Level
    reasons: tuple[str, ...]
    findings: tuple[Finding, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "disk": self.disk,
            "level": self.level,
            "reasons": list(self.reasons),
            "findings": [f.to_json() for f in self.findings],
        }

    @classmethod
    def from_json(cls, raw: Any) -> DiskVerdict:
        if not isinstance(raw, Mapping):
            raise TypeError(raw)
        found = raw.get("findings", [])
        if not isinstance(found, list):
            raise TypeError(found)
        return cls(
            str(raw["disk"]),
            parse_level(raw["level"]),
            parse_strings(raw["reasons"]),
            tuple(Finding.from_json(f) for f in found),
        )


@dataclass(frozen=True)
class Verdict:
    """The verdict of one backup: its ``level`` (worst disk's), the reasons of every disk
    (prefixed with the disk name), ``learning`` when the VM had fewer than
    ``Thresholds.learning`` earlier backups."""

    level: Level
    reasons: tuple[str, ...]
    disks: tuple[DiskVerdict, ...] = ()
    learning: bool = False

    @property
    def suspicious(self) -> bool:
        return self.level == "suspicious"

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "reasons": list(self.reasons),
            "learning": self.learning,
            "disks": [d.to_json() for d in self.disks],
        }

    @classmethod
    def from_json(cls, raw: Any) -> Verdict:
        """Raises TypeError/ValueError/KeyError for anything that is no verdict."""
        if not isinstance(raw, Mapping):
            raise TypeError(raw)
        disks = raw.get("disks", [])
        if not isinstance(disks, list):
            raise TypeError(disks)
        return cls(
            parse_level(raw["level"]),
            parse_strings(raw["reasons"]),
            tuple(DiskVerdict.from_json(d) for d in disks),
            bool(raw.get("learning", False)),
        )


def worst(levels: Sequence[Level]) -> Level:
    """The highest of ``levels`` (``normal`` for none)."""
    return max(levels, key=LEVELS.index, default="normal")


@dataclass
class _Findings:
    found: list[Finding] = field(default_factory=list)

    def add(
        self,
        level: Level,
        reason: str,
        kind: str,
        value: float,
        volume: str = "",
        names: Sequence[str] = (),
    ) -> None:
        if level != "normal":
            self.found.append(Finding(kind, volume, level, reason, float(value), tuple(names)))


def judge(
    backup_disks: Sequence[DiskSignals],
    earlier: int,
    t: Thresholds,
    accept: Acceptor | None = None,
) -> Verdict:
    """The verdict of one backup whose VM had ``earlier`` complete backups before it;
    ``accept`` says which findings the VM's accepted patterns cover (none without it)."""
    learning = earlier < t.learning
    disks = tuple(judge_disk(d, learning, t, accept) for d in backup_disks)
    reasons = tuple(f"{d.disk}: {r}" for d in disks for r in d.reasons)
    return Verdict(worst([d.level for d in disks]), reasons, disks, learning)


def judge_disk(
    d: DiskSignals, learning: bool, t: Thresholds, accept: Acceptor | None = None
) -> DiskVerdict:
    """One disk's level, reasons and findings (see the module doc). Findings an accepted
    pattern covers count neither towards the level nor towards escalation."""
    f = _Findings()
    if not learning:
        _byte_signals(d.stats, d.history, t, f)
    for v in d.volumes:
        _file_signals(v, t, f)
    _allocation_signals(d, t, f)
    found = [replace(x, pattern=accept(d.disk, x)) if accept is not None else x for x in f.found]
    levels = [x.level for x in found if x.pattern is None]
    level = worst(levels)
    if levels.count("unusual") >= t.escalate:
        level = "suspicious"
    return DiskVerdict(d.disk, level, tuple(x.text for x in found), tuple(found))


def robust_z(value: float, history: Sequence[float], floor: float) -> tuple[float, float]:
    """(robust z of ``value`` against ``history``, its median). The MAD is scaled by 1.4826
    and never below ``floor`` (> 0), so the score is finite."""
    med = statistics.median(history)
    mad = statistics.median(abs(h - med) for h in history) * 1.4826
    return (value - med) / max(mad, floor), med


def _byte_signals(
    s: ImageStats, history: Sequence[ImageStats], t: Thresholds, f: _Findings
) -> None:
    if not history or s.new_bytes < t.min_new_bytes:
        return
    news = [float(h.new_bytes) for h in history]
    floor = max(t.mad_floor_bytes, t.mad_floor_share * statistics.median(news))
    z, med = robust_z(s.new_bytes, news, floor)
    f.add(
        _grade(z, t.z_unusual, t.z_suspicious),
        f"new bytes {s.new_bytes / MIB:.1f} MiB vs median {med / MIB:.1f} MiB (z {z:.1f})",
        "new_bytes",
        z,
    )
    ratio = s.stored_bytes / s.new_bytes
    base = [h.stored_bytes / h.new_bytes for h in history if h.new_bytes]
    base_ratio = statistics.median(base) if base else 0.0
    if ratio >= t.stored_ratio_unusual and ratio - base_ratio >= t.stored_ratio_rise:
        why = f"new chunks stored at {ratio:.0%} of their size (median {base_ratio:.0%})"
        f.add("unusual", why, "stored_ratio", ratio)
    _entropy_signal(s, history, t, f)
    _dedup_signal(s, history, t, f)
    holes = [float(h.holes_punched) for h in history]
    floor = max(float(t.min_holes), t.mad_floor_share * statistics.median(holes))
    hz, hmed = robust_z(s.holes_punched, holes, floor)
    f.add(
        _grade(hz, t.z_unusual, t.z_suspicious),
        f"{s.holes_punched} blocks punched vs median {hmed:.0f} (z {hz:.1f})",
        "holes",
        hz,
    )


def _entropy_signal(
    s: ImageStats, history: Sequence[ImageStats], t: Thresholds, f: _Findings
) -> None:
    if s.incompressible_blocks is None or not s.new_chunks:
        return
    share = s.incompressible_blocks / s.new_chunks
    base = [
        h.incompressible_blocks / h.new_chunks
        for h in history
        if h.incompressible_blocks is not None and h.new_chunks
    ]
    med = statistics.median(base) if base else 0.0
    if share >= t.incompressible_unusual and share - med >= t.incompressible_rise:
        why = f"{share:.0%} of new blocks do not compress (median {med:.0%})"
        f.add("unusual", why, "incompressible", share)


def _dedup_signal(
    s: ImageStats, history: Sequence[ImageStats], t: Thresholds, f: _Findings
) -> None:
    def share(x: ImageStats) -> float | None:
        total = x.dedup_blocks + x.new_chunks
        return x.dedup_blocks / total if total else None

    now = share(s)
    base = [v for v in map(share, history) if v is not None]
    if now is None or not base:
        return
    med = statistics.median(base)
    if med > 0.05 and now < t.dedup_collapse * med:
        why = f"dedup found {now:.0%} of written blocks (median {med:.0%})"
        f.add("unusual", why, "dedup", 1 - now / med)


def _file_signals(v: VolumeChanges, t: Thresholds, f: _Findings) -> None:
    if v.ransom_notes:
        names = ", ".join(v.ransom_notes[:3])
        why = f"{v.volume}: ransom-note names appeared ({names})"
        notes = sorted({n.rsplit("/", 1)[-1].lower() for n in v.ransom_notes})
        f.add("unusual", why, "ransom_notes", len(v.ransom_notes), v.volume, notes)
    if v.files < t.min_files:
        return
    changed = v.modified + v.renamed + v.removed
    share = changed / v.files
    f.add(
        _grade(share, t.changed_unusual, t.changed_suspicious),
        f"{v.volume}: {share:.0%} of {v.files} files changed ({v.modified} modified, "
        f"{v.renamed} renamed, {v.removed} removed)",
        "changed",
        share,
        v.volume,
    )
    ext_share = v.new_extension_files / v.files
    exts = ", ".join(v.new_extensions[:5])
    f.add(
        _grade(ext_share, t.new_ext_unusual, t.new_ext_suspicious),
        f"{v.volume}: {v.new_extension_files} files with new extensions ({exts})",
        "new_extensions",
        ext_share,
        v.volume,
        v.new_extensions,
    )


def _allocation_signals(d: DiskSignals, t: Thresholds, f: _Findings) -> None:
    """The volume-metadata signal, from the allocation summaries of this image and the
    previous one (what each backup's allocation map already recorded; no extra read). Only
    volumes with a recognised filesystem in the previous image are compared:

    - one that now has no filesystem, or another one: ``filesystem_gone`` (volume-level
      encryption or a wipe rewrites the superblock);
    - one whose used bytes changed by ``alloc_change_unusual`` of them or more (when it used
      at least ``min_alloc_bytes``): ``allocation_change`` (mass deletion, reformatting);
    - new bytes of at least ``min_new_bytes`` and ``rewrite_share`` of the filesystems' used
      bytes while their used bytes moved by at most ``rewrite_alloc_slack`` of the new bytes:
      ``rewrite_in_place`` (file data rewritten without any allocation change, as
      encrypt-in-place ransomware does; a database rewriting preallocated files does too,
      so each is ``unusual`` only)."""
    if not d.allocation or not d.previous_allocation:
        return
    now = {a.volume: a for a in d.allocation}
    moved, used = 0, 0
    for old in d.previous_allocation:
        new = now.get(old.volume)
        if old.fstype is None or new is None:
            continue
        if new.fstype != old.fstype:
            why = f"{old.volume}: {old.fstype} no longer recognised (now {new.fstype or 'none'})"
            f.add("unusual", why, "filesystem_gone", 1.0, old.volume)
            continue
        delta = abs(new.used_bytes - old.used_bytes)
        moved, used = moved + delta, used + new.used_bytes
        share = delta / old.used_bytes if old.used_bytes else 0.0
        if old.used_bytes >= t.min_alloc_bytes and share >= t.alloc_change_unusual:
            why = (
                f"{old.volume}: used space went from {old.used_bytes / MIB:.1f} MiB to "
                f"{new.used_bytes / MIB:.1f} MiB"
            )
            f.add("unusual", why, "allocation_change", share, old.volume)
    new_bytes = d.stats.new_bytes
    if (
        used
        and new_bytes >= t.min_new_bytes
        and new_bytes >= t.rewrite_share * used
        and moved <= t.rewrite_alloc_slack * new_bytes
    ):
        why = (
            f"{new_bytes / MIB:.1f} MiB of new data but the filesystems' used space moved "
            f"{moved / 1024:.0f} KiB (data rewritten in place)"
        )
        f.add("unusual", why, "rewrite_in_place", new_bytes / used)


def _grade(score: float, unusual: float, suspicious: float) -> Level:
    if score >= suspicious:
        return "suspicious"
    return "unusual" if score >= unusual else "normal"

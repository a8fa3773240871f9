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
  volume did not have before, and known ransom-note names (:data:`RANSOM_NOTES`).

History signals need ``Thresholds.learning`` earlier backups of the VM: before that the VM is
*learning* and only the file signals (which need no history) are judged. A disk's level is its
worst signal's, raised to ``suspicious`` when ``escalate`` or more signals are unusual at once
(independent signals agreeing); the backup's level is its worst disk's.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # meta stores a Verdict: a runtime import would be circular
    from vmaccel.catalog.index.meta import ImageStats

Level = Literal["normal", "unusual", "suspicious"]
LEVELS: tuple[Level, ...] = ("normal", "unusual", "suspicious")
MIB = 1 << 20

# Names ransomware families leave in every directory they encrypt (lower case, compared with
# a file's base name). Documented in docs/json.md; extend through Thresholds.ransom_notes.
RANSOM_NOTES: frozenset[str] = frozenset(
    {
        "how_to_decrypt.txt",
        "how_to_decrypt.html",
        "how_to_recover_files.txt",
        "decrypt_instructions.txt",
        "decrypt_instructions.html",
        "readme_for_decrypt.txt",
        "restore_files.txt",
        "recover-files.txt",
        "_readme.txt",
        "!readme!.txt",
        "readme-warning.txt",
        "your_files_are_encrypted.txt",
        "files_encrypted.txt",
        "how_to_back_files.html",
        "ransom_note.txt",
    }
)


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


@dataclass(frozen=True)
class DiskVerdict:
    disk: str
    level: Level
    reasons: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"disk": self.disk, "level": self.level, "reasons": list(self.reasons)}

    @classmethod
    def from_json(cls, raw: Any) -> DiskVerdict:
        if not isinstance(raw, Mapping):
            raise TypeError(raw)
        return cls(str(raw["disk"]), _level(raw["level"]), _strings(raw["reasons"]))


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
            _level(raw["level"]),
            _strings(raw["reasons"]),
            tuple(DiskVerdict.from_json(d) for d in disks),
            bool(raw.get("learning", False)),
        )


def _level(v: Any) -> Level:
    if v not in LEVELS:
        raise ValueError(v)
    return v  # type: ignore[no-any-return]


def _strings(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise TypeError(v)
    return tuple(v)


def worst(levels: Sequence[Level]) -> Level:
    """The highest of ``levels`` (``normal`` for none)."""
    return max(levels, key=LEVELS.index, default="normal")


@dataclass
class _Findings:
    found: list[tuple[Level, str]] = field(default_factory=list)

    def add(self, level: Level, reason: str) -> None:
        if level != "normal":
            self.found.append((level, reason))


def judge(backup_disks: Sequence[DiskSignals], earlier: int, t: Thresholds) -> Verdict:
    """The verdict of one backup whose VM had ``earlier`` complete backups before it."""
    learning = earlier < t.learning
    disks = tuple(judge_disk(d, learning, t) for d in backup_disks)
    reasons = tuple(f"{d.disk}: {r}" for d in disks for r in d.reasons)
    return Verdict(worst([d.level for d in disks]), reasons, disks, learning)


def judge_disk(d: DiskSignals, learning: bool, t: Thresholds) -> DiskVerdict:
    """One disk's level and reasons (see the module doc)."""
    f = _Findings()
    if not learning:
        _byte_signals(d.stats, d.history, t, f)
    for v in d.volumes:
        _file_signals(v, t, f)
    levels = [lvl for lvl, _ in f.found]
    level = worst(levels)
    if levels.count("unusual") >= t.escalate:
        level = "suspicious"
    return DiskVerdict(d.disk, level, tuple(r for _, r in f.found))


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
    )
    ratio = s.stored_bytes / s.new_bytes
    base = [h.stored_bytes / h.new_bytes for h in history if h.new_bytes]
    base_ratio = statistics.median(base) if base else 0.0
    if ratio >= t.stored_ratio_unusual and ratio - base_ratio >= t.stored_ratio_rise:
        why = f"new chunks stored at {ratio:.0%} of their size (median {base_ratio:.0%})"
        f.add("unusual", why)
    _entropy_signal(s, history, t, f)
    _dedup_signal(s, history, t, f)
    holes = [float(h.holes_punched) for h in history]
    floor = max(float(t.min_holes), t.mad_floor_share * statistics.median(holes))
    hz, hmed = robust_z(s.holes_punched, holes, floor)
    f.add(
        _grade(hz, t.z_unusual, t.z_suspicious),
        f"{s.holes_punched} blocks punched vs median {hmed:.0f} (z {hz:.1f})",
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
        f.add("unusual", f"{share:.0%} of new blocks do not compress (median {med:.0%})")


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
        f.add("unusual", f"dedup found {now:.0%} of written blocks (median {med:.0%})")


def _file_signals(v: VolumeChanges, t: Thresholds, f: _Findings) -> None:
    if v.ransom_notes:
        names = ", ".join(v.ransom_notes[:3])
        f.add("unusual", f"{v.volume}: ransom-note names appeared ({names})")
    if v.files < t.min_files:
        return
    changed = v.modified + v.renamed + v.removed
    share = changed / v.files
    f.add(
        _grade(share, t.changed_unusual, t.changed_suspicious),
        f"{v.volume}: {share:.0%} of {v.files} files changed ({v.modified} modified, "
        f"{v.renamed} renamed, {v.removed} removed)",
    )
    ext_share = v.new_extension_files / v.files
    exts = ", ".join(v.new_extensions[:5])
    f.add(
        _grade(ext_share, t.new_ext_unusual, t.new_ext_suspicious),
        f"{v.volume}: {v.new_extension_files} files with new extensions ({exts})",
    )


def _grade(score: float, unusual: float, suspicious: float) -> Level:
    if score >= suspicious:
        return "suspicious"
    return "unusual" if score >= unusual else "normal"

"""The findings of the anomaly verdict (:mod:`vmaccel.catalog.anomaly`): levels, the known
ransom-note names, and :class:`Finding`, one signal that fired, in the form stored with the
verdict and matched against accepted patterns (:mod:`vmaccel.catalog.anomalypatterns`).

Pure data: no I/O, imports nothing of ours.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Level = Literal["normal", "unusual", "suspicious"]
LEVELS: tuple[Level, ...] = ("normal", "unusual", "suspicious")

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
class Finding:
    """One signal that fired. ``kind`` names the signal (:data:`KINDS`), ``volume`` the volume
    of a per-volume signal (``""`` for the disk's), ``value`` its figure, oriented so that
    larger is worse (a robust z, a share, a ratio, a count), ``names`` the extensions or
    ransom-note names it saw. ``pattern`` is the id of the accepted pattern that covers it
    (None when it counts towards the level)."""

    kind: str
    volume: str
    level: Level
    reason: str
    value: float
    names: tuple[str, ...] = ()
    pattern: int | None = None

    @property
    def text(self) -> str:
        """The reason as shown: prefixed when an accepted pattern covers it."""
        return (
            self.reason
            if self.pattern is None
            else (f"acknowledged pattern {self.pattern}: {self.reason}")
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "volume": self.volume,
            "level": self.level,
            "reason": self.reason,
            "value": self.value,
            "names": list(self.names),
            "pattern": self.pattern,
        }

    @classmethod
    def from_json(cls, raw: Any) -> Finding:
        """Raises TypeError/ValueError/KeyError for anything that is no finding."""
        if not isinstance(raw, Mapping) or raw["kind"] not in KINDS:
            raise TypeError(raw)
        pattern = raw.get("pattern")
        if pattern is not None and not isinstance(pattern, int):
            raise TypeError(pattern)
        value = raw["value"]
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise TypeError(value)
        return cls(
            str(raw["kind"]),
            str(raw["volume"]),
            parse_level(raw["level"]),
            str(raw["reason"]),
            float(value),
            parse_strings(raw.get("names", [])),
            pattern,
        )


KINDS = frozenset(
    {
        "new_bytes",
        "stored_ratio",
        "incompressible",
        "dedup",
        "holes",
        "ransom_notes",
        "changed",
        "new_extensions",
        "filesystem_gone",
        "rewrite_in_place",
        "allocation_change",
    }
)
# Decides whether an accepted pattern covers a finding of a disk: the pattern's id, or None.
Acceptor = Callable[[str, Finding], int | None]


def parse_level(v: Any) -> Level:
    if v not in LEVELS:
        raise ValueError(v)
    return v  # type: ignore[no-any-return]


def parse_strings(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise TypeError(v)
    return tuple(v)

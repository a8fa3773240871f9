"""Counts of what the fault matrix did and what it broke, for `bench/bench_faults.py`.

Every fault suite under tests/faults records one `Tally` per test through `record`. Records go
to ``$VMACCEL_FAULT_REPORT/<suite>.jsonl`` when that variable names a directory, and nowhere
otherwise, so plain pytest runs write nothing. ``VMACCEL_FAULTS_LONG=1`` asks the suites for
their long run (`scale`): the CI run stays quick, the bench runs the full counts.

A tally counts events, never seconds: `runs` events of one `kind` were injected, and of those
`damaged` left verify unclean, `lost` lost a committed restore point, `wrong_bytes` restored or
read bytes that differ from the source. The target of the whole matrix is zero for all three.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

Kind = Literal["kill", "disk_full", "injected_fault", "fuzz_case", "concurrency", "history_day"]


@dataclass
class Tally:
    """What one test of a fault suite injected and found (counts, not times)."""

    suite: str
    kind: Kind
    runs: int = 0
    damaged: int = 0
    lost: int = 0
    wrong_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, *, damaged: bool = False, lost: bool = False, wrong: bool = False) -> None:
        """Count one injected event and what it broke."""
        self.runs += 1
        self.damaged += int(damaged)
        self.lost += int(lost)
        self.wrong_bytes += int(wrong)


def long_run() -> bool:
    """Whether the long (bench) run was asked for."""
    return os.environ.get("VMACCEL_FAULTS_LONG", "") not in ("", "0")


def scale(quick: int, long: int) -> int:
    """`quick` events in CI, `long` in the bench run."""
    return long if long_run() else quick


def record(tally: Tally) -> None:
    """Append `tally` as one JSON line to the report directory, if one is set."""
    where = os.environ.get("VMACCEL_FAULT_REPORT")
    if not where:
        return
    path = Path(where) / f"{tally.suite}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(asdict(tally)) + "\n")

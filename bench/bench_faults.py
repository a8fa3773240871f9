#!/usr/bin/env python3
"""The fault matrix's long run: how many faults were injected and how many did harm.

Run by hand, never from CI (``bench/README.md`` explains the figures)::

    .venv/bin/python bench/bench_faults.py [--quick] [--json] [--suite NAME] [--dir DIR]

Runs ``pytest tests/faults`` in a child process with ``VMACCEL_FAULTS_LONG=1`` (unless
``--quick``: the CI counts) and ``VMACCEL_FAULT_REPORT`` set, then sums the tallies every fault
suite records (tests/faults/tally.py) per kind. A second child runs the guestfs corruption
sweep (``tests/guestfs/test_corruption_matrix.py`` with ``VMACCEL_CORRUPTION_SWEEP=1``;
``--quick``: the CI matrix instead) and its per-filesystem reports count as ``fuzz_case``
events, a failed case (file data outside the allocation map, a crash or a hang) as wrong bytes.

Exit status 0 when every test passed and no event left damage, a lost restore point or a
wrong byte; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ROOT / "tests" / "faults"
CORRUPTION = "tests/guestfs/test_corruption_matrix.py"
KINDS = ("kill", "disk_full", "injected_fault", "fuzz_case", "concurrency", "history_day")
HARM = ("damaged", "lost", "wrong_bytes")


@dataclass
class Run:
    """One pytest child: what it ran, its exit code, wall seconds, peak RSS and test counts."""

    name: str
    args: list[str]
    rc: int = 0
    wall_s: float = 0.0
    peak_rss_mib: float = 0.0
    tests: dict[str, int] = field(default_factory=dict)


@dataclass
class Count:
    runs: int = 0
    damaged: int = 0
    lost: int = 0
    wrong_bytes: int = 0

    def add(self, other: dict[str, Any]) -> None:
        self.runs += int(other.get("runs", 0))
        for name in HARM:
            setattr(self, name, getattr(self, name) + int(other.get(name, 0)))

    @property
    def harm(self) -> int:
        return self.damaged + self.lost + self.wrong_bytes


def fault_suites() -> list[str]:
    return sorted(p.stem for p in FAULTS.glob("test_*.py"))


def pick(suite: str | None) -> tuple[list[str], bool]:
    """The fault modules to run and whether to run the corruption sweep, for ``--suite``."""
    if suite is None:
        return fault_suites(), True
    name = Path(suite).stem
    if name in ("corruption", "test_corruption_matrix", "corruption_sweep"):
        return [], True
    for candidate in (name, f"test_{name}"):
        if candidate in fault_suites():
            return [candidate], False
    raise SystemExit(
        f"no fault suite {suite!r}: one of {', '.join(fault_suites())} or 'corruption'"
    )


def run_pytest(run: Run, env: dict[str, str], junit: Path) -> None:
    """Run ``pytest`` with `run.args` (its output on our stderr); fill in `run`. wait4 gives
    this child's own rusage, so each run's peak RSS is its own."""
    cmd = [sys.executable, "-m", "pytest", *run.args, "-q", "-p", "no:cacheprovider"]
    cmd += [f"--junitxml={junit}"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sys.stderr, stderr=sys.stderr)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = run.rc = os.waitstatus_to_exitcode(status)
    run.wall_s = round(time.monotonic() - started, 1)
    run.peak_rss_mib = round(usage.ru_maxrss / 1024, 1)
    run.tests = junit_counts(junit)


def junit_counts(path: Path) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    if not path.exists():
        return counts
    report = ET.parse(path)  # noqa: S314 - written by our own pytest child in our private directory
    for suite in report.getroot().iter("testsuite"):
        tests, failed, errors, skipped = (
            int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")
        )
        counts["failed"] += failed
        counts["errors"] += errors
        counts["skipped"] += skipped
        counts["passed"] += tests - failed - errors - skipped
    return counts


def read_tallies(where: Path) -> tuple[dict[str, Count], dict[str, Count], dict[str, list[str]]]:
    """Sum every tally line under `where`: per kind, per suite, and the suites' notes."""
    kinds = {k: Count() for k in KINDS}
    suites: dict[str, Count] = {}
    notes: dict[str, list[str]] = {}
    for path in sorted(where.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            tally = json.loads(line)
            kinds.setdefault(tally["kind"], Count()).add(tally)
            suites.setdefault(tally["suite"], Count()).add(tally)
            notes.setdefault(tally["suite"], []).extend(tally.get("notes", []))
    return kinds, suites, notes


def read_corruption(where: Path) -> Count:
    """The corruption sweep's per-filesystem reports as fuzz cases (failed: wrong bytes)."""
    count = Count()
    for path in sorted(where.glob("*.json")):
        report = json.loads(path.read_text())
        count.add({"runs": report["cases"], "wrong_bytes": report["failed"]})
    return count


def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    modules, sweep = pick(args.suite)
    env = {k: v for k, v in os.environ.items() if k != "VMACCEL_FAULTS_LONG"}
    if not args.quick:
        env["VMACCEL_FAULTS_LONG"] = "1"
    tallies, reports = work / "tally", work / "corruption"
    for d in (tallies, reports):
        d.mkdir(parents=True, exist_ok=True)
        for old in (*d.glob("*.jsonl"), *d.glob("*.json")):
            old.unlink()
    env["VMACCEL_FAULT_REPORT"] = str(tallies)
    runs = []
    started = time.monotonic()
    if modules:
        run = Run("faults", [str(FAULTS.relative_to(ROOT) / f"{m}.py") for m in modules])
        run_pytest(run, env, work / "faults.xml")
        runs.append(run)
    if sweep:
        test = "test_corruption_matrix" if args.quick else "test_corruption_sweep"
        run = Run("corruption", [f"{CORRUPTION}::{test}"])
        sweep_env = {**env, "VMACCEL_CORRUPTION_REPORT": str(reports)}
        if not args.quick:
            sweep_env["VMACCEL_CORRUPTION_SWEEP"] = "1"
        run_pytest(run, sweep_env, work / "corruption.xml")
        runs.append(run)
    kinds, suites, notes = read_tallies(tallies)
    if sweep:
        name = "corruption_matrix" if args.quick else "corruption_sweep"
        suites[name] = read_corruption(reports)
        kinds["fuzz_case"].add(asdict(suites[name]))
    tests = {
        k: sum(r.tests.get(k, 0) for r in runs) for k in ("passed", "failed", "errors", "skipped")
    }
    harm = {name: sum(getattr(c, name) for c in kinds.values()) for name in HARM}
    return {
        "mode": "quick" if args.quick else "long",
        "kinds": {k: asdict(c) for k, c in kinds.items()},
        "suites": {s: asdict(c) for s, c in sorted(suites.items())},
        "harm": harm,
        "pytest": tests,
        "runs": [asdict(r) for r in runs],
        "wall_s": round(time.monotonic() - started, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "notes": notes,
        "ok": not any(harm.values())
        and not tests["failed"]
        and not tests["errors"]
        and all(r.rc in (0, 5) for r in runs),
    }


def table(result: dict[str, Any]) -> str:
    lines = [f"fault matrix ({result['mode']} run)", ""]
    head = f"{'':24} {'events':>8} {'damaged':>8} {'lost':>8} {'wrong':>8}"
    lines.append(head)
    for title, rows in (("kind", result["kinds"]), ("suite", result["suites"])):
        lines.append(f"-- by {title}")
        for name, c in rows.items():
            lines.append(
                f"{name:24} {c['runs']:>8} {c['damaged']:>8} {c['lost']:>8} {c['wrong_bytes']:>8}"
            )
    t = result["pytest"]
    lines += [
        "",
        f"pytest: {t['passed']} passed, {t['failed']} failed, {t['errors']} errors, "
        f"{t['skipped']} skipped",
    ]
    for r in result["runs"]:
        lines.append(
            f"  {r['name']}: exit {r['rc']}, {r['wall_s']} s, peak RSS {r['peak_rss_mib']} MiB"
        )
    lines.append(f"wall {result['wall_s']} s, peak RSS {result['peak_rss_mib']} MiB")
    for suite, notes in result["notes"].items():
        for note in notes:
            if not note.startswith("{"):
                lines.append(f"{suite}: {note}")
    harm = result["harm"]
    lines.append(
        f"target 0 damaged / 0 lost / 0 wrong: {harm['damaged']} / {harm['lost']} / "
        f"{harm['wrong_bytes']} -> {'OK' if result['ok'] else 'FAILED'}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the CI counts, not the long run")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument(
        "--suite", help="one module of tests/faults (e.g. history or test_kill) or 'corruption'"
    )
    parser.add_argument("--dir", type=Path, help="keep the tallies and reports there")
    args = parser.parse_args(argv)
    if args.dir:
        result = bench(args, args.dir.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="vmaccel-faults-") as tmp:
            result = bench(args, Path(tmp))
    print(json.dumps(result, indent=1) if args.json else table(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Anomaly-signal benchmark: the false-positive rate of the backup verdict over long histories.

Run by hand, never from CI (needs root, loop devices and the test bed's mkfs tools)::

    .venv/bin/python bench/bench_anomaly.py [--image gpt|mbr|small] [--days 30]
                                            [--seeds 11 22 33] [--json]

For each seed: a private copy of the test bed's guest image (``gpt``: FAT, ext4, NTFS and an
LVM ext4 volume with a 50 MiB file; ``small``: the one-volume ext4 disk the CI proof in
``tests/plugin/test_anomaly_history.py`` uses) is backed up with standalone ``--source file:``
backups, then ``--days`` normal guest days (``testbed.guestimages.ransom.normal_day``), each
backed up, then one ransomware day (30 % of the files encrypted and renamed to ``*.locked``,
a ransom note). Reports the verdict levels over the normal days (the false-positive rate:
unusual and suspicious ones, with their reasons) and the ransomware day's level and reasons.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed.guestimages import builder
from testbed.guestimages.builder import build_image
from testbed.guestimages.model import GuestImage
from testbed.guestimages.mounts import clone_image
from testbed.guestimages.ransom import SMALL, normal_day, ransomware_day
from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.cli.app import main


def _run(*args: str | Path) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main([str(a) for a in args])
    if rc != 0:
        raise SystemExit(f"vmaccel {' '.join(map(str, args))} exited {rc}")
    return out.getvalue()


def _image(name: str, work: Path) -> GuestImage:
    if name == "small":
        return build_image(SMALL, work / "small.img")
    shared = builder.load_or_build(name)
    dest = work / f"{name}.img"
    clone_image(shared.path, dest)
    return replace(shared, path=dest)


def history(name: str, days: int, seed: int, work: Path) -> dict[str, Any]:
    """One history: verdict levels of the normal days and the ransomware day's verdict."""
    work.mkdir()
    image = _image(name, work)
    repo = work / "repo"
    Repository.init(repo, RepositoryConfig())
    backup = ("backup", "--repo", repo, "--source", f"file:{image.path}", "--name", "g")
    started = time.monotonic()
    _run(*backup)
    for day in range(1, days + 1):
        image = normal_day(image, seed, day)
        _run(*backup)
    ransomware_day(image, 0.3, seed)
    _run(*backup)
    docs = json.loads(_run("backups", "list", "--repo", repo, "--json"))
    normal = [d["verdict"] for d in docs[1 : days + 1]]
    return {
        "seed": seed,
        "seconds": round(time.monotonic() - started, 1),
        "levels": dict(Counter(v["level"] for v in normal)),
        "false_positives": [
            {"day": i + 1, "level": v["level"], "reasons": v["reasons"]}
            for i, v in enumerate(normal)
            if v["level"] != "normal"
        ],
        "ransomware_day": docs[-1]["verdict"],
    }


def main_() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--image", choices=("gpt", "mbr", "small"), default="gpt")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[11, 22, 33])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-anomaly-") as tmp:
        runs = [history(args.image, args.days, s, Path(tmp) / f"s{s}") for s in args.seeds]
    total: Counter[str] = Counter()
    for r in runs:
        total.update(r["levels"])
    days = sum(total.values())
    report = {
        "image": args.image,
        "normal_days": days,
        "levels": dict(total),
        "unusual_rate": total["unusual"] / days if days else 0.0,
        "suspicious_rate": total["suspicious"] / days if days else 0.0,
        "ransomware_flagged": sum(r["ransomware_day"]["level"] == "suspicious" for r in runs),
        "runs": runs,
    }
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return
    print(f"{args.image}: {days} normal days over {len(runs)} histories: {dict(total)}")
    print(f"ransomware day suspicious in {report['ransomware_flagged']} of {len(runs)}")
    for r in runs:
        for fp in r["false_positives"]:
            print(f"  seed {r['seed']} day {fp['day']}: {fp['level']}: {'; '.join(fp['reasons'])}")


if __name__ == "__main__":
    main_()

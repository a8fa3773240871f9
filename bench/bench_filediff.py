#!/usr/bin/env python3
"""File diff benchmark: ``files diff`` between two restore points of a ~15,000-file volume.

Run by hand, never from CI::

    .venv/bin/python bench/bench_filediff.py [--files 15000] [--changed 0.02] [--json]

Builds a scratch repository with two backups whose volume listings (synthetic, a Debian-like
tree of ``--files`` entries) differ in ``--changed`` of their files (modified, removed,
added, renamed in equal parts), then, in a subprocess of its own so that its peak RSS
(``ru_maxrss``) is the diff's, times the use case (``vmaccel.service.files.diff_files``: open
the repository, resolve both backups, stream both listings in path order, merge) for the
whole volume and for ``--path /etc``. The baseline, measured in the same subprocess, is
streaming both listings without comparing them: the ratio is what the diff adds to reading.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.catalog.filecatalog import attach_listing, store_listing
from vmaccel.catalog.index.records import FileRecord

T0 = 1_700_000_000 * 10**9
TOPS = ("etc", "usr/bin", "usr/lib", "usr/share/doc", "usr/share/man", "var/lib", "var/log")


def synthetic_tree(files: int, seed: int = 1) -> list[FileRecord]:
    """``files`` regular files in directories of ~40 under a Debian-like top level."""
    rng = random.Random(seed)
    out: dict[str, FileRecord] = {}
    inode = 100
    for i in range(files):
        top = TOPS[i % len(TOPS)]
        d = f"/{top}/pkg{i // 40:04d}"
        if d not in out:
            out[d] = FileRecord(d, "dir", 4096, T0, inode, 0o755)
            inode += 1
        path = f"{d}/file-{i:06d}.{rng.choice(['conf', 'so', 'gz', 'txt'])}"
        out[path] = FileRecord(path, "file", rng.randrange(1 << 20), T0 + i, inode, 0o644)
        inode += 1
    return list(out.values())


def churned(tree: list[FileRecord], fraction: float, seed: int = 2) -> list[FileRecord]:
    """``tree`` with ``fraction`` of its files modified, removed, added or renamed."""
    rng = random.Random(seed)
    new = {r.path: r for r in tree}
    victims = rng.sample([r for r in tree if r.kind == "file"], int(fraction * len(tree)))
    for i, r in enumerate(victims):
        action = i % 4
        if action == 0:
            new[r.path] = FileRecord(r.path, "file", r.size + 1, r.mtime_ns, r.inode, r.mode)
        elif action == 1:
            del new[r.path]
        elif action == 2:
            path = r.path + ".new"
            new[path] = FileRecord(path, "file", 1, T0, 10_000_000 + i, 0o644)
        else:
            del new[r.path]
            path = r.path + ".renamed"
            new[path] = FileRecord(path, "file", r.size, r.mtime_ns, r.inode, r.mode)
    return list(new.values())


def build(repo_path: Path, files: int, fraction: float) -> None:
    Repository.init(repo_path, RepositoryConfig())
    tree = synthetic_tree(files)
    with Repository.open(repo_path, write=True) as r:
        for records in (tree, churned(tree, fraction)):
            with r.begin_backup("bench") as bw:
                w = bw.image_writer("disk0", 1 << 20)
                w.write(0, b"\1" * (1 << 20))
                bw.finish_image("disk0", w)
                backup = bw.commit()
            with r.files.writing():
                image = r.image(backup, "disk0")
                attach_listing(r.files, image.id, "p1", "ext4", store_listing(r.files, records))


def measure(repo_path: Path) -> dict[str, Any]:
    """The diff phase (run in its own process)."""
    from vmaccel.service.context import Context
    from vmaccel.service.files import diff_files

    ctx = Context(repo_path)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with Repository.open(repo_path) as r:
        start = time.perf_counter()
        a, b = r.files.image_volumes(1)[0], r.files.image_volumes(2)[0]
        rows = sum(1 for _ in r.files.listing_entries(a.listing_id))
        rows += sum(1 for _ in r.files.listing_entries(b.listing_id))
        stream = time.perf_counter() - start
    figures: dict[str, Any] = {"rows_streamed": rows, "stream_seconds": stream}
    for name, path in (("whole", None), ("etc", "/etc")):
        start = time.perf_counter()
        report = diff_files(ctx, "1", "2", path=path)
        figures[f"{name}_seconds"] = time.perf_counter() - start
        figures[f"{name}_counts"] = report.volumes[0].counts()
    figures["rss_before_mib"] = rss_before / 1024
    figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=15_000)
    ap.add_argument("--changed", type=float, default=0.02)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--phase", choices=["diff"], help=argparse.SUPPRESS)
    ap.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase == "diff":
        print(json.dumps(measure(args.repo)))
        return
    with tempfile.TemporaryDirectory(prefix="vmaccel-bench-filediff-") as tmp:
        repo_path = Path(tmp) / "repo"
        build(repo_path, args.files, args.changed)
        out = subprocess.run(
            [sys.executable, __file__, "--phase", "diff", "--repo", str(repo_path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    figures = {"files": args.files, "changed": args.changed, **json.loads(out)}
    if args.json:
        print(json.dumps(figures, indent=2, sort_keys=True))
        return
    print(
        f"listing: {args.files} files, {args.changed:.0%} changed; {figures['rows_streamed']} rows"
    )
    print(f"stream both listings (baseline): {figures['stream_seconds'] * 1000:8.1f} ms")
    for name in ("whole", "etc"):
        s = figures[f"{name}_seconds"]
        print(
            f"files diff ({name:5}): {s * 1000:8.1f} ms  "
            f"({s / figures['stream_seconds']:.2f}x baseline)  {figures[f'{name}_counts']}"
        )
    print(
        f"peak RSS of the diff process: {figures['peak_rss_mib']:.1f} MiB "
        f"(after imports: {figures['rss_before_mib']:.1f} MiB)"
    )


if __name__ == "__main__":
    main()

"""Benchmark the read side: the FUSE mount against the in-process image reader, and restore.

Run by hand (one run, on an idle machine; it needs /dev/fuse)::

    python bench/mount.py [--size-gib 4] [--json] [--workdir DIR]

It writes a repository with one image of the given size (a quarter holes, the rest 64 KiB
blocks half random and half zeros, so zstd has real work), then measures:

* sequential read of the whole image, in 1 MiB reads, through the in-process ImageReader
  (the baseline) and through the mount (page-cache mode and --direct-io mode), and the ratio;
* random 4 KiB reads through the mount: p50/p99 latency;
* `restore disk` of the image to a sparse file (library call, as the CLI does);
* the mount process's peak RSS (VmHWM);
* restic/borg restore of the same image, when those tools are installed (else "not installed").

Kernel caches are dropped between runs when running as root. Nothing is gated on the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# `python bench/mount.py` puts bench/ first on sys.path, where bench/bench_catalog.py would shadow
# the catalog package: put the repository root there instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from catalog import Repository, RepositoryConfig  # noqa: E402
from fusemount.restore import restore_disk  # noqa: E402

MiB = 1024 * 1024
BS = 64 * 1024
CHILD = "import sys; from plugin.cli.app import run; sys.argv[0] = 'vmaccel'; run()"


def make_repo(path: Path, size: int) -> None:
    Repository.init(path, RepositoryConfig(block_size=BS))
    rnd = random.Random(1)
    with Repository.open(path, write=True) as repo, repo.begin_backup("bench") as bw:
        w = bw.image_writer("disk0", size)
        for off in range(0, size, 4 * MiB):
            if rnd.random() < 0.25:
                continue  # a hole
            piece = bytearray(4 * MiB)
            for b in range(0, 4 * MiB, BS):
                piece[b : b + BS // 2] = rnd.randbytes(BS // 2)
            w.write(off, bytes(piece))
        bw.finish_image("disk0", w)
        bw.commit()


def drop_caches() -> None:
    if os.geteuid() == 0:
        subprocess.run(["sync"], check=False)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def in_process_read(repo_path: Path) -> float:
    with Repository.open(repo_path) as repo:
        img = repo.image(repo.backups()[-1], "disk0")
        with repo.open_image(img) as reader:
            buf, off = memoryview(bytearray(MiB)), 0
            t = time.perf_counter()
            while n := reader.read_into(off, buf):
                off += n
            return off / (time.perf_counter() - t)


def sequential_read(path: Path) -> float:
    fd = os.open(path, os.O_RDONLY)
    try:
        total, t = 0, time.perf_counter()
        while data := os.read(fd, MiB):
            total += len(data)
        return total / (time.perf_counter() - t)
    finally:
        os.close(fd)


def random_reads(path: Path, size: int, count: int = 2000) -> list[float]:
    rnd = random.Random(2)
    fd = os.open(path, os.O_RDONLY)
    try:
        lat = []
        for _ in range(count):
            off = rnd.randrange(0, size // 4096) * 4096
            t = time.perf_counter()
            os.pread(fd, 4096, off)
            lat.append(time.perf_counter() - t)
        return lat
    finally:
        os.close(fd)


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def mounted_run(repo_path: Path, mnt: Path, size: int, direct_io: bool) -> dict[str, Any]:
    mnt.mkdir(exist_ok=True)
    cmd = [sys.executable, "-c", CHILD, "mount", "--repo", str(repo_path), str(mnt), "-f"]
    proc = subprocess.Popen(cmd + (["--direct-io"] if direct_io else ["--no-direct-io"]))
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the mount did not come up")
            time.sleep(0.05)
        raw = mnt / "bench" / "latest" / "disk0.raw"
        drop_caches()
        seq = sequential_read(raw)
        drop_caches()
        lat = random_reads(raw, size)
        q = statistics.quantiles(lat, n=100)
        return {
            "sequential_bytes_per_s": seq,
            "random_4k_p50_ms": q[49] * 1e3,
            "random_4k_p99_ms": q[98] * 1e3,
            "mount_peak_rss_bytes": peak_rss(proc.pid),
        }
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], check=False)
        proc.wait(timeout=30)


def restore_run(repo_path: Path, target: Path) -> dict[str, Any]:
    drop_caches()
    with Repository.open(repo_path) as repo:
        img = repo.image(repo.backups()[-1], "disk0")
        with repo.open_image(img) as reader:
            report = restore_disk(reader, target, "bench disk0", overwrite=True)
    blocks = target.stat().st_blocks * 512
    target.unlink()
    return {"restore_bytes_per_s": report.rate, "restore_allocated_bytes": blocks}


def other_tools() -> dict[str, str]:
    return {tool: "installed (not compared yet)" if shutil.which(tool) else "not installed"
            for tool in ("restic", "borg")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=4.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    size = int(args.size_gib * 1024) * MiB
    work = Path(tempfile.mkdtemp(prefix="vmaccel-bench-", dir=args.workdir))
    try:
        t = time.perf_counter()
        make_repo(work / "repo", size)
        result: dict[str, Any] = {"image_bytes": size, "setup_s": time.perf_counter() - t}
        drop_caches()
        result["in_process_bytes_per_s"] = in_process_read(work / "repo")
        for mode, dio in (("page_cache", False), ("direct_io", True)):
            run = mounted_run(work / "repo", work / "mnt", size, dio)
            run["ratio_to_in_process"] = (
                run["sequential_bytes_per_s"] / result["in_process_bytes_per_s"]
            )
            result[mode] = run
        result.update(restore_run(work / "repo", work / "restored.raw"))
        result["other_tools"] = other_tools()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    print(f"image {size / MiB:.0f} MiB (setup {result['setup_s']:.1f} s)")
    print(f"in-process reader   {result['in_process_bytes_per_s'] / MiB:8.0f} MiB/s")
    for mode in ("page_cache", "direct_io"):
        r = result[mode]
        print(f"mount ({mode:10s}) {r['sequential_bytes_per_s'] / MiB:8.0f} MiB/s "
              f"= {r['ratio_to_in_process']:.2f}x; random 4 KiB p50 {r['random_4k_p50_ms']:.2f} ms"
              f" p99 {r['random_4k_p99_ms']:.2f} ms; peak RSS "
              f"{r['mount_peak_rss_bytes'] / MiB:.0f} MiB")
    print(f"restore disk        {result['restore_bytes_per_s'] / MiB:8.0f} MiB/s "
          f"({result['restore_allocated_bytes'] / MiB:.0f} MiB allocated)")
    print(f"restic/borg: {result['other_tools']}")


if __name__ == "__main__":
    main()

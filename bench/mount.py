"""Benchmark the read side: the FUSE mount against the in-process image reader, and restore.

Run by hand, as root (it needs /dev/fuse; dropping caches needs root), on an idle machine::

    python bench/mount.py [--json] [--workdir DIR] [--reps 3] [--cache cold|warm]
                          [--image PATH] [--size-gib 4] [--no-peers]

The image: ``--image``, by default the realistic 4 GiB Debian disk of the other benches
(``/var/tmp/vmaccel-bench/day0-4g.img``, built by ``bench/backup_images.py``) when it exists;
otherwise one of ``--size-gib`` generated like ``bench/bench_catalog.py``'s ``Content`` (43 %
zeros, 20 % random, 37 % text) into a sparse file. It is backed up into a repository (library
calls, 4 MiB writes), then:

* sequential read of the whole image, in 1 MiB reads, through the in-process ImageReader
  (the baseline) and through the mount (page-cache mode and --direct-io mode), and the ratio;
* random 4 KiB reads through the mount: p50/p99 latency;
* the mount process's peak RSS (VmHWM);
* restore of the image, ``--reps`` times, by ``vmaccel restore disk`` (the CLI, a child
  process: a sparse file, fsynced) and, when they are on PATH, ``borg extract`` (repository
  ``borg init -e none``, ``borg create --compression zstd,3``) and ``restic restore``
  (``restic init --repository-version 2``, default compression), each into an empty directory.
  Every restore is followed by ``sync``, inside its timed wall. ``--cache cold`` (default)
  drops the page cache (``echo 3 > /proc/sys/vm/drop_caches``) before each restore; ``warm``
  reads the tool's repository into the page cache instead. Each tool's wall, user/sys CPU and
  peak RSS (``wait4`` rusage of the child) are reported, medians of the repetitions, and the
  ratios peer wall / vmaccel wall (issue 6 asks >= 1.5 against the faster peer). The first
  repetition compares every restored image with the source (``cmp``).

Peer backups run once (their times are reported, not compared). Nothing is gated on the
figures; the 1-minute load average is recorded before each restore: compare only runs taken
on an idle machine.
"""

from __future__ import annotations

import argparse
import importlib
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

from vmaccel.catalog import Repository, RepositoryConfig  # noqa: E402

MiB = 1024 * 1024
BS = 64 * 1024
CHILD = "import sys; from vmaccel.cli.app import run; sys.argv[0] = 'vmaccel'; run()"
REALISTIC = Path("/var/tmp/vmaccel-bench/day0-4g.img")  # noqa: S108 - read-only input cached by bench_backup.py
PEERS = ("borg", "restic")
TIME = Path("/usr/bin/time")


def generate_image(path: Path, size: int) -> None:
    """bench_catalog's Content (43 % zeros, 20 % random, 37 % text) as a sparse file."""
    sys.path.append(str(Path(__file__).resolve().parent))  # after the root: no shadowing
    content, zero = importlib.import_module("bench_catalog").Content(size), bytes(4 * MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        for off, piece in content.chunks(4 * MiB):
            if piece != zero[: len(piece)]:
                os.pwrite(fd, piece, off)
    finally:
        os.close(fd)


def make_repo(path: Path, image: Path) -> None:
    """One backup ("bench", disk0) of ``image``, written in 4 MiB pieces (zero blocks become
    holes in the map, as in a real backup)."""
    Repository.init(path, RepositoryConfig(block_size=BS))
    size = image.stat().st_size
    with Repository.open(path, write=True) as repo, repo.begin_backup("bench") as bw:
        w = bw.image_writer("disk0", size)
        with open(image, "rb", buffering=0) as f:
            for off in range(0, size, 4 * MiB):
                w.write(off, f.read(4 * MiB))
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


# -- restore: vmaccel against borg and restic -------------------------------------------------


def child(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> dict[str, Any]:
    """Run ``argv`` (output to ``log``), then ``sync``: wall (both), the sync alone, and the
    child's user/sys CPU (``wait4``) and peak RSS. The peak RSS comes from ``/usr/bin/time``
    when installed: a child forked from this (large) process would otherwise report this
    process's RSS, which Linux carries over into the child's high-water mark at exec."""
    rss_file = log.with_suffix(".rss")
    rss_file.unlink(missing_ok=True)
    timer = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file)] if TIME.exists() else []
    with open(log, "wb") as out:
        t = time.perf_counter()
        proc = subprocess.Popen(
            timer + argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        )
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        ran = time.perf_counter() - t
        subprocess.run(["sync"], check=True)
        wall = time.perf_counter() - t
    if proc.returncode != 0:
        text = log.read_text() + log.with_suffix(".err").read_text()
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {text[-2000:]}")
    rss = int(rss_file.read_text().split()[-1]) if timer else ru.ru_maxrss
    return {
        "wall_s": round(wall, 3),
        "sync_s": round(wall - ran, 3),
        "user_s": round(ru.ru_utime, 3),
        "sys_s": round(ru.ru_stime, 3),
        "peak_rss_bytes": rss * 1024,
    }


class Tool:
    """One restoring tool: its repository, set up once, and one restore into ``out``."""

    def __init__(self, name: str, work: Path, image: Path, vmaccel_repo: Path) -> None:
        self.name, self.image = name, image
        self.top = work / name
        self.top.mkdir(exist_ok=True)
        self.repo = vmaccel_repo if name == "vmaccel" else self.top / "repo"
        self.out = self.top / "out"
        self.env = {
            **os.environ,
            "BORG_BASE_DIR": str(self.top / "home"),
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
            "RESTIC_PASSWORD": "bench",
            "RESTIC_CACHE_DIR": str(self.top / "cache"),
            "RESTIC_REPOSITORY": str(self.repo),
        }

    def version(self) -> str:
        if self.name == "vmaccel":
            return "work tree"
        argv = [self.name, "version" if self.name == "restic" else "--version"]
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()

    def setup(self) -> dict[str, Any]:
        """Back the image up (borg, restic); vmaccel's repository is made by ``make_repo``."""
        if self.name == "vmaccel":
            return {}
        log = self.top / "setup.log"
        if self.name == "borg":
            child(["borg", "init", "-e", "none", str(self.repo)], self.env, self.top, log)
            argv = ["borg", "create", "--compression", "zstd,3", f"{self.repo}::a", str(self.image)]
        else:
            child(["restic", "init", "--repository-version", "2"], self.env, self.top, log)
            argv = ["restic", "backup", "--host", "bench", str(self.image)]
        r = child(argv, self.env, self.top, log)
        return {"backup_wall_s": r["wall_s"], "repo_bytes": du(self.repo)}

    def restore(self) -> tuple[dict[str, Any], Path]:
        """Restore into an empty ``out`` directory: (figures, the restored image)."""
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir()
        log = self.top / "restore.log"
        if self.name == "vmaccel":
            target = self.out / "disk0.raw"
            argv = [
                sys.executable,
                "-c",
                CHILD,
                "restore",
                "disk",
                "--repo",
                str(self.repo),
                "bench@latest",
                "disk0",
                "--to",
                str(target),
                "--json",
            ]
            r = child(argv, self.env, self.out, log)
            report = json.loads(log.read_text())
            r["bytes_per_s"] = report["bytes_per_second"]
            r["allocated_bytes"] = target.stat().st_blocks * 512
            return r, target
        if self.name == "borg":
            argv = ["borg", "extract", f"{self.repo}::a"]
        else:
            argv = ["restic", "restore", "latest", "--target", str(self.out)]
        r = child(argv, self.env, self.out, log)
        found = [p for p in self.out.rglob("*") if p.is_file() and not p.is_symlink()]
        if len(found) != 1:
            raise SystemExit(f"{self.name} restored {len(found)} files, expected one")
        return r, found[0]

    def warm(self) -> None:
        """Read the repository once, so a warm restore finds it in the page cache."""
        for p in self.repo.rglob("*"):
            if p.is_file():
                with open(p, "rb", buffering=0) as f:
                    while f.read(8 * MiB):
                        pass


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def same_file(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)], check=False).returncode == 0


def restore_compare(
    work: Path, repo: Path, image: Path, reps: int, cache: str, peers: bool
) -> dict[str, Any]:
    names = ["vmaccel"] + [p for p in PEERS if peers and shutil.which(p)]
    tools = [Tool(n, work, image, repo) for n in names]
    out: dict[str, Any] = {"cache": cache, "reps": reps}
    for p in PEERS:
        if p not in names:
            out[p] = "skipped (--no-peers)" if not peers else "not installed"
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for tool in tools:
        out[tool.name] = {"version": tool.version(), **tool.setup()}
    for rep in range(reps):
        for tool in tools:
            if cache == "cold":
                drop_caches()
            else:
                tool.warm()
            load = os.getloadavg()[0]
            r, restored = tool.restore()
            r["load_1m"] = round(load, 2)
            if rep == 0:
                r["identical"] = same_file(restored, image)
            shutil.rmtree(tool.out, ignore_errors=True)
            runs[tool.name].append(r)
    for name, rs in runs.items():
        med = {
            k: statistics.median(r[k] for r in rs) for k in ("wall_s", "sync_s", "user_s", "sys_s")
        }
        out[name].update(med)
        out[name]["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in rs)
        out[name]["identical"] = rs[0]["identical"]
        out[name]["runs"] = rs
        if name == "vmaccel":
            out[name]["bytes_per_s"] = statistics.median(r["bytes_per_s"] for r in rs)
            out[name]["allocated_bytes"] = rs[0]["allocated_bytes"]
    v = out["vmaccel"]["wall_s"]
    ratios = {f"speedup_vs_{n}": out[n]["wall_s"] / v for n in names if n != "vmaccel"}
    if ratios:
        ratios["speedup_vs_faster_peer"] = min(ratios.values())
    out.update(ratios)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument(
        "--image",
        type=Path,
        default=None,
        help=f"image file to use (default: {REALISTIC} if it exists, else generated)",
    )
    ap.add_argument(
        "--generate",
        action="store_true",
        help="generate the image, even if the realistic one exists",
    )
    ap.add_argument("--size-gib", type=float, default=4.0, help="size of a generated image")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--reps", type=int, default=3, help="restore repetitions (medians)")
    ap.add_argument(
        "--cache",
        choices=("cold", "warm"),
        default="cold",
        help="page cache before each restore (cold: dropped; needs root)",
    )
    ap.add_argument("--no-peers", action="store_true", help="skip borg and restic")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vmaccel-bench-", dir=args.workdir))
    try:
        t = time.perf_counter()
        image = args.image or (REALISTIC if REALISTIC.exists() and not args.generate else None)
        source = str(image) if image else "generated (bench_catalog Content)"
        if image is None:
            image = work / "image.raw"
            generate_image(image, int(args.size_gib * 1024) * MiB)
        size = image.stat().st_size
        make_repo(work / "repo", image)
        result: dict[str, Any] = {
            "image": source,
            "image_bytes": size,
            "setup_s": time.perf_counter() - t,
            "load_1m_at_start": os.getloadavg()[0],
        }
        drop_caches()
        result["in_process_bytes_per_s"] = in_process_read(work / "repo")
        for mode, dio in (("page_cache", False), ("direct_io", True)):
            run = mounted_run(work / "repo", work / "mnt", size, dio)
            run["ratio_to_in_process"] = (
                run["sequential_bytes_per_s"] / result["in_process_bytes_per_s"]
            )
            result[mode] = run
        result["restore"] = restore_compare(
            work, work / "repo", image, args.reps, args.cache, not args.no_peers
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    print_table(result)


def print_table(result: dict[str, Any]) -> None:
    print(
        f"image {result['image']}: {result['image_bytes'] / MiB:.0f} MiB "
        f"(setup {result['setup_s']:.1f} s, load {result['load_1m_at_start']:.2f})"
    )
    print(f"in-process reader   {result['in_process_bytes_per_s'] / MiB:8.0f} MiB/s")
    for mode in ("page_cache", "direct_io"):
        r = result[mode]
        print(
            f"mount ({mode:10s}) {r['sequential_bytes_per_s'] / MiB:8.0f} MiB/s "
            f"= {r['ratio_to_in_process']:.2f}x; random 4 KiB p50 {r['random_4k_p50_ms']:.2f} ms"
            f" p99 {r['random_4k_p99_ms']:.2f} ms; peak RSS "
            f"{r['mount_peak_rss_bytes'] / MiB:.0f} MiB"
        )
    res = result["restore"]
    print(f"restore, {res['cache']} cache, median of {res['reps']} (wall includes sync):")
    for name in ("vmaccel", *PEERS):
        r = res[name]
        if isinstance(r, str):
            print(f"  {name:8s} {r}")
            continue
        walls = " / ".join(f"{x['wall_s']:.2f}" for x in r["runs"])
        extra = (
            f"; {r['bytes_per_s'] / MiB:.0f} MiB/s, {r['allocated_bytes'] / MiB:.0f} MiB allocated"
            if name == "vmaccel"
            else ""
        )
        print(
            f"  {name:8s} {r['wall_s']:6.2f} s (runs {walls}; sync {r['sync_s']:.2f} s) "
            f"CPU {r['user_s']:.2f} user + {r['sys_s']:.2f} sys, peak RSS "
            f"{r['peak_rss_bytes'] / MiB:.0f} MiB, identical {r['identical']}{extra}"
        )
    for key in ("speedup_vs_borg", "speedup_vs_restic", "speedup_vs_faster_peer"):
        if key in res:
            print(f"  {key:24s} {res[key]:.2f}x (issue 6 target >= 1.5)")


if __name__ == "__main__":
    main()

"""Benchmark the read side: the FUSE mount against the in-process image reader, and restore.

Run by hand, as root (it needs /dev/fuse; dropping caches needs root), on an idle machine::

    python bench/mount.py [--json] [--workdir DIR] [--reps 3] [--cache cold|warm]
                          [--image PATH] [--size-gib 4] [--no-peers] [--mount-only]

The image: ``--image``, by default the realistic 4 GiB Debian disk of the other benches
(``/var/tmp/vmaccel-bench/day0-4g.img``, built by ``bench/backup_images.py``) when it exists;
otherwise one of ``--size-gib`` generated like ``bench/bench_catalog.py``'s ``Content`` (43 %
zeros, 20 % random, 37 % text) into a sparse file. Which one was used, and for the realistic
disk whether it holds a debootstrap Debian or the /usr stand-in, is printed and in the JSON
(``image_system``). It is backed up into a repository (library calls, 4 MiB writes), then:

* sequential read of the whole image, in 1 MiB reads, through the in-process ImageReader
  (the baseline) and through the mount (page-cache mode and --direct-io mode), and the ratio;
* random 4 KiB reads through the mount, at 4 KiB-aligned offsets inside the image's data
  extents only (holes would be served without decompression): p50/p99 latency;
* the mount process's peak RSS (VmHWM);
* restore of the image, ``--reps`` times, by ``vmaccel restore disk`` (the CLI, a child
  process: a sparse file, fsynced) and every installed peer configuration of ``peers.py``
  (borg with its default chunker and with ``--chunker-params fixed,4194304``, restic), each
  into an empty directory, with ``--sparse`` where the installed version's restore has it
  (reported per peer: ``restore_flags``). Every restore is followed by ``sync``, inside its
  timed wall. ``--cache cold`` (default)
  drops the page cache (``echo 3 > /proc/sys/vm/drop_caches``) before each restore; ``warm``
  reads the tool's repository into the page cache instead. Each tool's wall, user/sys CPU and
  peak RSS (``wait4`` rusage of the child) are reported, medians of the repetitions, and the
  ratios peer wall / vmaccel wall: per configuration, against the faster borg
  (``speedup_vs_borg``) and against the fastest peer (issue 6 asks >= 1.5). The first
  repetition compares every restored image with the source (``cmp``).

``--mount-only`` stops after the read side (no restores, no peers).

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

sys.path.append(str(Path(__file__).resolve().parent))  # after the root: no shadowing

import pagecache  # noqa: E402
from peers import PEERS, Peer, fastest  # noqa: E402

from vmaccel.catalog import Repository, RepositoryConfig  # noqa: E402

MiB = 1024 * 1024
BS = 64 * 1024
CHILD = "import sys; from vmaccel.cli.app import run; sys.argv[0] = 'vmaccel'; run()"
REALISTIC = Path("/var/tmp/vmaccel-bench/day0-4g.img")  # noqa: S108 - read-only input cached by bench_backup.py
TIME = Path("/usr/bin/time")


def generate_image(path: Path, size: int) -> None:
    """bench_catalog's Content (43 % zeros, 20 % random, 37 % text) as a sparse file."""
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
    """Bytes per second of reading ``path`` whole in 1 MiB reads into one reused buffer, as
    ``in_process_read`` and ``dd bs=1M`` do (a new 1 MiB object per read would add an mmap,
    256 page faults and an munmap to every read of the mount side only)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        buf, total, t = bytearray(MiB), 0, time.perf_counter()
        while n := os.readv(fd, [buf]):
            total += n
        return total / (time.perf_counter() - t)
    finally:
        os.close(fd)


def data_extents(repo_path: Path) -> list[tuple[int, int]]:
    """(offset, length) of the backed-up image's data extents (holes left out), from its map."""
    with Repository.open(repo_path) as repo:
        img = repo.image(repo.backups()[-1], "disk0")
        with repo.open_image(img) as reader:
            return [(o, n) for o, n, is_data in reader.extents() if is_data]


def random_reads(path: Path, data: list[tuple[int, int]], count: int = 2000) -> list[float]:
    """Latency (s) of ``count`` 4 KiB preads at 4 KiB-aligned offsets inside the data extents
    (an extent drawn uniformly, then an offset in it: small extents weigh as much as large)."""
    rnd = random.Random(2)
    fd = os.open(path, os.O_RDONLY)
    try:
        lat = []
        for _ in range(count):
            start, length = data[rnd.randrange(len(data))]
            off = start + rnd.randrange(length // 4096) * 4096
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


def mounted_run(
    repo_path: Path, mnt: Path, data: list[tuple[int, int]], direct_io: bool
) -> dict[str, Any]:
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
        pagecache.drop_all()
        seq = sequential_read(raw)
        pagecache.drop_all()
        lat = random_reads(raw, data)
        q = statistics.quantiles(lat, n=100)
        return {
            "sequential_bytes_per_s": seq,
            "random_4k_p50_ms": q[49] * 1e3,
            "random_4k_p99_ms": q[98] * 1e3,
            "random_4k_sampling": "data extents only (holes excluded), 4 KiB aligned",
            "mount_peak_rss_bytes": peak_rss(proc.pid),
            "load_1m": round(os.getloadavg()[0], 2),
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
    """One restoring tool: vmaccel or a peer configuration (``peers.py``), its repository, set
    up once, and one restore into ``out``."""

    def __init__(self, peer: Peer | None, work: Path, image: Path, vmaccel_repo: Path) -> None:
        self.peer, self.image = peer, image
        self.name = peer.name if peer else "vmaccel"
        self.top = work / self.name
        self.top.mkdir(exist_ok=True)
        self.repo = self.top / "repo" if peer else vmaccel_repo
        self.out = self.top / "out"
        self.env = {**os.environ, **(peer.env(self.top, self.repo) if peer else {})}

    def describe(self) -> dict[str, Any]:
        return self.peer.describe() if self.peer else {"version": "work tree"}

    def setup(self) -> dict[str, Any]:
        """Back the image up (peers); vmaccel's repository is made by ``make_repo``."""
        if self.peer is None:
            return {}
        log = self.top / "setup.log"
        child(self.peer.init_argv(self.repo), self.env, self.top, log)
        r = child(self.peer.backup_argv(self.repo, "a", str(self.image)), self.env, self.top, log)
        return {"backup_wall_s": r["wall_s"], "repo_bytes": du(self.repo)}

    def restore(self) -> tuple[dict[str, Any], Path]:
        """Restore into an empty ``out`` directory: (figures, the restored image)."""
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir()
        log = self.top / "restore.log"
        if self.peer is None:
            target = self.out / "disk0.raw"
            argv = [sys.executable, "-c", CHILD, "restore", "disk", "--repo", str(self.repo)]
            argv += ["bench@latest", "disk0", "--to", str(target), "--json"]
            r = child(argv, self.env, self.out, log)
            r["bytes_per_s"] = json.loads(log.read_text())["bytes_per_second"]
            r["allocated_bytes"] = target.stat().st_blocks * 512
            return r, target
        r = child(self.peer.restore_argv(self.repo, "a", self.out), self.env, self.out, log)
        found = [p for p in self.out.rglob("*") if p.is_file() and not p.is_symlink()]
        if len(found) != 1:
            raise SystemExit(f"{self.name} restored {len(found)} files, expected one")
        r["allocated_bytes"] = found[0].stat().st_blocks * 512
        return r, found[0]

    def warm(self) -> None:
        """Read the repository once, so a warm restore finds it in the page cache."""
        pagecache.warm(pagecache.files_under(self.repo))


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def same_file(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)], check=False).returncode == 0


def restore_compare(
    work: Path, repo: Path, image: Path, reps: int, cache: str, peers: bool
) -> dict[str, Any]:
    """Each tool's restore ``reps`` times (medians), alternated; ratios peer wall / vmaccel."""
    used = [p for p in PEERS if peers and p.installed()]
    tools = [Tool(None, work, image, repo)] + [Tool(p, work, image, repo) for p in used]
    out: dict[str, Any] = {"cache": cache, "reps": reps}
    for p in PEERS:
        if p not in used:
            out[p.name] = "skipped (--no-peers)" if not peers else f"{p.tool} not installed"
    runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in tools}
    for tool in tools:
        out[tool.name] = {**tool.describe(), **tool.setup()}
    for rep in range(reps):
        for tool in tools:
            if cache == "cold":
                pagecache.drop_all()
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
        for k in ("wall_s", "sync_s", "user_s", "sys_s"):
            out[name][k] = statistics.median(r[k] for r in rs)
        out[name]["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in rs)
        out[name]["identical"] = rs[0]["identical"]
        out[name]["allocated_bytes"] = rs[0]["allocated_bytes"]
        out[name]["runs"] = rs
        if name == "vmaccel":
            out[name]["bytes_per_s"] = statistics.median(r["bytes_per_s"] for r in rs)
    out.update(speedups({t.name: out[t.name]["wall_s"] for t in tools}))
    return out


def speedups(walls: dict[str, float]) -> dict[str, Any]:
    """Peer wall / vmaccel wall: per configuration, against the faster borg and restic, and
    against the fastest peer."""
    v = walls.pop("vmaccel")
    out: dict[str, Any] = {f"speedup_vs_{n}": w / v for n, w in walls.items()}
    for tool in ("borg", "restic"):
        if best := fastest(walls, tool):
            out[f"faster_{tool}"] = best[0]
            out[f"speedup_vs_faster_{tool}"] = best[1] / v
    if walls:
        out["speedup_vs_faster_peer"] = min(walls.values()) / v
    return out


def image_source(image: Path | None, size_gib: float) -> dict[str, str]:
    """What the image is: the realistic disk (and which system it holds, from the metadata
    ``backup_images.py`` writes next to it), a given file, or generated content."""
    if image is None:
        return {"image": "generated", "image_system": f"bench_catalog Content, {size_gib} GiB"}
    tag = image.name.removeprefix("day0-").removeprefix("day1-").removesuffix(".img")
    meta = image.with_name(f"images-{tag}.json")
    if not meta.exists():
        return {"image": str(image), "image_system": "unknown (no backup_images metadata)"}
    info = json.loads(meta.read_text())["images"]
    return {
        "image": str(image),
        "image_system": info["system"],
        "image_system_note": info.get("system_note", "(built before system_note was recorded)"),
    }


def parse_args() -> argparse.Namespace:
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
    ap.add_argument(
        "--mount-only",
        action="store_true",
        help="only the read side (in-process reader, mount in both modes); no restores",
    )
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="vmaccel-bench-", dir=args.workdir))
    try:
        t = time.perf_counter()
        image = args.image or (REALISTIC if REALISTIC.exists() and not args.generate else None)
        result: dict[str, Any] = image_source(image, args.size_gib)
        if image is None:
            image = work / "image.raw"
            generate_image(image, int(args.size_gib * 1024) * MiB)
        make_repo(work / "repo", image)
        data = data_extents(work / "repo")
        result["image_bytes"] = image.stat().st_size
        result["image_data_bytes"] = sum(n for _, n in data)
        result["setup_s"] = time.perf_counter() - t
        result["load_1m_at_start"] = os.getloadavg()[0]
        pagecache.drop_all()
        result["in_process_bytes_per_s"] = in_process_read(work / "repo")
        for mode, dio in (("page_cache", False), ("direct_io", True)):
            run = mounted_run(work / "repo", work / "mnt", data, dio)
            run["ratio_to_in_process"] = (
                run["sequential_bytes_per_s"] / result["in_process_bytes_per_s"]
            )
            result[mode] = run
        if not args.mount_only:
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
        f"image {result['image']} ({result['image_system']}"
        f"{': ' + result['image_system_note'] if 'image_system_note' in result else ''}): "
        f"{result['image_bytes'] / MiB:.0f} MiB, {result['image_data_bytes'] / MiB:.0f} MiB data "
        f"(setup {result['setup_s']:.1f} s, load {result['load_1m_at_start']:.2f})"
    )
    print(f"in-process reader   {result['in_process_bytes_per_s'] / MiB:8.0f} MiB/s")
    for mode in ("page_cache", "direct_io"):
        r = result[mode]
        print(
            f"mount ({mode:10s}) {r['sequential_bytes_per_s'] / MiB:8.0f} MiB/s "
            f"= {r['ratio_to_in_process']:.2f}x; random 4 KiB in data extents p50 "
            f"{r['random_4k_p50_ms']:.2f} ms p99 {r['random_4k_p99_ms']:.2f} ms; peak RSS "
            f"{r['mount_peak_rss_bytes'] / MiB:.0f} MiB (load {r['load_1m']:.2f})"
        )
    if "restore" not in result:
        return
    res = result["restore"]
    print(f"restore, {res['cache']} cache, median of {res['reps']} (wall includes sync):")
    for name in ("vmaccel", *(p.name for p in PEERS)):
        r = res[name]
        if isinstance(r, str):
            print(f"  {name:12s} {r}")
            continue
        walls = " / ".join(f"{x['wall_s']:.2f}" for x in r["runs"])
        flags = " ".join(r.get("restore_flags", [])) or "-"
        extra = f"; {r['bytes_per_s'] / MiB:.0f} MiB/s" if name == "vmaccel" else f"; {flags}"
        print(
            f"  {name:12s} {r['wall_s']:6.2f} s (runs {walls}; sync {r['sync_s']:.2f} s) "
            f"CPU {r['user_s']:.2f} user + {r['sys_s']:.2f} sys, peak RSS "
            f"{r['peak_rss_bytes'] / MiB:.0f} MiB, {r['allocated_bytes'] / MiB:.0f} MiB "
            f"allocated, identical {r['identical']}{extra}"
        )
    for key, value in res.items():
        if key.startswith("speedup_vs_"):
            which = res.get(key.replace("speedup_vs_", ""), "")  # faster_borg: its name
            print(f"  {key:30s} {value:.2f}x {which} (issue 6: >= 1.5 against the faster peer)")


if __name__ == "__main__":
    main()

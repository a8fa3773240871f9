"""The same-run reference of a full backup (issue 16): what an ideal 2-thread pipeline does
with the bytes vmaccel's full backup reads.

``plan_extents`` asks vmaccel's own planner (allocation map of the guest filesystems, the
file's data extents) which byte ranges a full backup of an image reads; ``reference_pipeline``
then reads exactly those ranges with ``pread`` in 4 MiB pieces on the calling thread, zero
checks, BLAKE3-hashes and zstd-3-compresses every 64 KiB block on a pool of ``threads``
threads (at most 16 pieces in flight) and appends the compressed blocks to one output file,
fsynced at the end. No index, no map, no pack format: the floor a full backup's disk work
can approach on this machine.

Run alone: ``.venv/bin/python bench/refpipe.py IMAGE`` prints the reference's JSON.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from workload import block_encoder  # noqa: E402

from vmaccel.guestfs.extent import Extent  # noqa: E402
from vmaccel.plugin.engine.disk import allocation_of  # noqa: E402
from vmaccel.plugin.engine.plan import FULL, plan_disk  # noqa: E402
from vmaccel.plugin.transport.file import FileSource  # noqa: E402

PIECE = 4 << 20
T = TypeVar("T")
INFLIGHT = 16


def plan_extents(image: Path, block_size: int = 64 << 10) -> list[Extent]:
    """The byte ranges a full ``vmaccel backup --source file:IMAGE`` reads (same planner)."""
    src = FileSource(image)
    try:
        amap, _ = allocation_of(src)
        plan = plan_disk(
            src.size, block_size, src.data_extents(), None, amap.used if amap else None, FULL, ""
        )
        return list(plan.read)
    finally:
        src.close()


def reference_pipeline(
    image: Path, extents: list[Extent], out_dir: Path, threads: int = 2, bs: int = 64 << 10
) -> dict[str, Any]:
    """Read ``extents`` of ``image``, hash + compress on ``threads`` threads, write the
    compressed non-zero blocks to a file in ``out_dir`` (deleted after). Wall and CPU seconds
    of this process, bytes read and written."""
    work = block_encoder(bs)
    fd_in = os.open(image, os.O_RDONLY)
    fd_out, tmp = tempfile.mkstemp(dir=out_dir, prefix="refpipe-")
    written = read = 0
    cpu0, t0 = time.process_time(), time.monotonic()
    try:
        with ThreadPoolExecutor(threads, "ref") as pool:
            inflight: deque[Future[list[bytes]]] = deque()
            for e in extents:
                for off in range(e.offset, e.end, PIECE):
                    n = min(PIECE, e.end - off)
                    inflight.append(pool.submit(work, os.pread(fd_in, n, off)))
                    read += n
                    if len(inflight) >= INFLIGHT:
                        written += os.write(fd_out, b"".join(inflight.popleft().result()))
            while inflight:
                written += os.write(fd_out, b"".join(inflight.popleft().result()))
        os.fsync(fd_out)
    finally:
        os.close(fd_in)
        os.close(fd_out)
        os.unlink(tmp)
    return {
        "threads": threads,
        "wall_s": round(time.monotonic() - t0, 3),
        "cpu_s": round(time.process_time() - cpu0, 3),
        "bytes_read": read,
        "bytes_written": written,
    }


def in_child(python: str, image: Path, work: Path) -> dict[str, Any]:
    """This script on ``image`` in a child process (its own memory): the reference's figures,
    plus the child's peak RSS (MiB, ``wait4``) and process wall (start-up included)."""
    with tempfile.TemporaryFile() as f:
        started = time.monotonic()
        argv = [python, str(Path(__file__).resolve()), str(image), str(work)]
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        f.seek(0)
        text = f.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"refpipe.py failed:\n{text[-3000:]}")
    doc = json.loads(text.strip().splitlines()[-1])
    return {**doc, "process_wall_s": round(wall, 3), "rss_mib": round(ru.ru_maxrss / 1024, 1)}


def around(
    backup: Callable[[], T], python: str, image: Path, work: Path
) -> tuple[T, dict[str, Any]]:
    """``backup()``'s result, and the reference on ``image`` run just before and just after
    it (in children) as one: the mean wall and CPU, both walls in ``runs_wall_s``."""
    runs = [in_child(python, image, work)]
    result = backup()
    runs.append(in_child(python, image, work))
    mean = {k: round(sum(r[k] for r in runs) / len(runs), 3) for k in ("wall_s", "cpu_s")}
    return result, {**runs[-1], **mean, "runs_wall_s": [r["wall_s"] for r in runs]}


def ratios(full: dict[str, Any], ref: dict[str, Any]) -> dict[str, float]:
    """Issue 16's ratios of a full backup (``bench_backup.py``'s figures) and its reference,
    as throughputs (bytes read per second: the vCenter path may plan a few percent fewer bytes
    than this planner on the image file): the backup's disk work (read, hash, compress, write)
    and its whole run (start-up, snapshot, commit, file catalog included) over the reference;
    and the backup's CPU per byte over the reference's."""
    ref_rate = ref["bytes_read"] / ref["wall_s"]
    per_byte = ref["bytes_read"] / full["bytes_read"]
    return {
        "full_vs_reference": round(full["bytes_read"] / full["disk_s"] / ref_rate, 3),
        "full_wall_vs_reference": round(full["bytes_read"] / full["wall_s"] / ref_rate, 3),
        "full_cpu_vs_reference": round(full["cpu_s"] * per_byte / ref["cpu_s"], 3),
    }


def table_row(ref: dict[str, Any]) -> str:
    """The reference as a row of ``bench_backup.py``'s table (same columns)."""
    mib = 1 << 20
    return (
        f"{'reference (2 thr, refpipe.py)':<30} {ref['wall_s']:>8.2f} {ref['cpu_s']:>7.2f} "
        f"{ref['rss_mib']:>7.0f} {ref['bytes_read'] / mib:>9.1f} "
        f"{ref['bytes_written'] / mib:>9.1f} {'':>9}  mean of {ref['runs_wall_s']} s, run "
        "just before and after the full backup (in-process wall and CPU)"
    )


def main() -> None:
    image = Path(sys.argv[1])
    extents = plan_extents(image)
    with tempfile.TemporaryDirectory(dir=sys.argv[2] if len(sys.argv) > 2 else None) as d:
        res = reference_pipeline(image, extents, Path(d))
    res["rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    res["load_before"] = os.getloadavg()[0]
    print(json.dumps(res))


if __name__ == "__main__":
    main()

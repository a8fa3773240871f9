#!/usr/bin/env python3
"""Scale-out bench, part 1: the same disk image backed up (``vmaccel backup --source
file:IMAGE``) and restored (``vmaccel restore disk``) with its objects in a local directory
and in S3, its catalog in SQLite and in PostgreSQL, all in one run.

Repositories, one per configuration (each made fresh with ``vmaccel repo init``):

* ``dir-sqlite``: objects in the repository directory, catalog ``index.db``: the baseline;
* ``dir-pg``: objects in the directory, ``--catalog postgresql://...`` (isolates the catalog);
* ``s3-pg``: ``--store s3://BUCKET/vm --endpoint E --catalog postgresql://...``;
* ``s3-sqlite``: ``--store s3://...`` with the SQLite catalog.

Every backup and restore is a child process, timed and measured by ``wait4`` (wall, CPU, peak
RSS); ``--rounds`` rounds (order alternated, a new repository each time) and the round with the
shortest wall is kept per operation. Backups skip the guest file index (``--no-file-index``):
the part measures the store and catalog seams, and the index would cost the same everywhere.
Each restore is checked (BLAKE2b, outside the timing) against the generated image, or, for
an ``--image`` whose free blocks the backup skips, against the first restore. Ratios are S3
(or PostgreSQL) MB/s over ``dir-sqlite`` MB/s of the same run: the target for S3 is >= 0.8.

Run by ``bench_scaleout.py``; alone: ``scaleout_store.py --work DIR --endpoint URL --pg URL``
(``PGPASSWORD`` and the AWS variables set).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any

from scaleout_common import (
    VMACCEL,
    MiB,
    emit,
    load_avg,
    log,
    new_bucket,
    new_database,
    parse_servers,
    wait4,
)

UNIT = 64 << 10
CONFIGS = ("dir-sqlite", "dir-pg", "s3-pg", "s3-sqlite")
WORDS = (
    *("GET", "POST", "/api/v1/items", "200", "404", "user", "session", "kernel:", "eth0"),
    *("systemd[1]:", "Started", "Stopped", "cron", "INFO", "WARN", "error", "timeout"),
    *("connection", "from", "127.0.0.1", "10.0.3.17", "ms", "bytes", "sshd", "accepted"),
)


def _text_pool(rng: random.Random, size: int) -> bytes:
    """Log-like lines (timestamps, words, numbers): compressible, as logs are."""
    lines, total = [], 0
    while total < size:
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
        line = f"2026-12-0{rng.randint(1, 4)}T{rng.randint(0, 86399):05d} {words} {rng.random()}\n"
        lines.append(line.encode())
        total += len(lines[-1])
    return b"".join(lines)


def make_image(path: Path, size: int, seed: int = 1) -> dict[str, int]:
    """Write a raw image of ``size`` bytes (a multiple of 64 KiB) of 64 KiB units: ~35 %
    zeros (written, as on a thick disk), ~30 % unique random, ~20 % repeats of 32 random
    blocks (dedup), ~15 % log-like text; returns the bytes of each kind."""
    rng = random.Random(seed)
    pool = [rng.randbytes(UNIT) for _ in range(32)]
    text = _text_pool(rng, 4 * MiB)
    kinds = {"zero": 0, "random": 0, "repeated": 0, "text": 0}
    zero = bytes(UNIT)
    with path.open("wb") as f:
        for n in range(size // UNIT):
            u = rng.random()
            if u < 0.35:
                kind, unit = "zero", zero
            elif u < 0.65:
                kind, unit = "random", rng.randbytes(UNIT)
            elif u < 0.85:
                kind, unit = "repeated", pool[rng.randrange(len(pool))]
            else:
                at = rng.randrange(len(text) - UNIT)
                kind, unit = "text", f"{n:016x}".encode() + text[at : at + UNIT - 16]
            f.write(unit)
            kinds[kind] += UNIT
    return kinds


def digest(path: Path) -> str:
    """BLAKE2b of a file's bytes (holes read as zeros)."""
    h = hashlib.blake2b()
    with path.open("rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def init_argv(config: str, repo: Path, endpoint: str, pg_server: str) -> list[str]:
    """``vmaccel repo init`` of one configuration (a new bucket / database for it)."""
    argv = [VMACCEL, "repo", "init", "--repo", str(repo)]
    if config.startswith("s3-"):
        argv += ["--store", f"s3://{new_bucket(endpoint)}/vm", "--endpoint", endpoint]
    if config.endswith("-pg"):
        argv += ["--catalog", new_database(pg_server)]
    return argv


def one_round(
    config: str, image: Path, want: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """Init, back up, restore and check one configuration in a new repository (deleted
    after); its figures. ``inner_s``: the time the command itself reports (no start-up).
    ``want``: the digest every restore must have (set by the first restore when empty)."""
    repo = args.work / f"repo-{config}"
    wait4(init_argv(config, repo, args.endpoint, args.pg))
    size = image.stat().st_size
    log(f"{config}: backup of {size / MiB:.0f} MiB")
    backup = wait4([VMACCEL, "backup", "--repo", str(repo), "--source", f"file:{image}",
                    "--name", "scaleout", "--no-file-index", "--json"],
                   servers=args.servers)  # fmt: skip
    (vm,) = json.loads(backup.pop("stdout"))["vms"]
    if not vm["ok"]:
        raise RuntimeError(f"{config}: backup failed: {vm.get('error')}")
    (disk,) = vm["disks"]
    target = args.work / f"restored-{config}.img"
    log(f"{config}: restore")
    restore = wait4([VMACCEL, "restore", "disk", str(vm["backup_id"]), "disk0", "--repo",
                     str(repo), "--to", str(target), "--json"], servers=args.servers)  # fmt: skip
    restore["inner_s"] = json.loads(restore.pop("stdout"))["seconds"]
    got = digest(target)
    target.unlink()
    shutil.rmtree(repo)
    if not want:
        want.append(got)
    if got != want[0]:
        raise RuntimeError(f"{config}: the restored disk differs from the first one checked")
    backup["inner_s"] = vm["duration"]
    for run in (backup, restore):
        run["MBps"], run["inner_MBps"] = size / 1e6 / run["wall_s"], size / 1e6 / run["inner_s"]
    for key in ("stored_bytes", "new_bytes", "read_fraction", "hole_bytes"):
        backup[key] = disk[key]
    return {"backup": backup, "restore": restore}


def best(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per operation, the round with the shortest wall (the least disturbed by other load)."""
    out: dict[str, Any] = {"rounds": rounds}
    for op in ("backup", "restore"):
        out[op] = min((r[op] for r in rounds), key=lambda r: r["wall_s"])
    return out


def ratios(configs: dict[str, Any]) -> dict[str, float]:
    """MB/s of each configuration over ``dir-sqlite``'s, backup and restore: from the wall
    time of the child (start-up included) and from the time the command reports (``inner``)."""
    base = configs["dir-sqlite"]
    out: dict[str, float] = {}
    for name, c in configs.items():
        if name != "dir-sqlite":
            for op in ("backup", "restore"):
                out[f"{op}_{name}_over_dir"] = c[op]["MBps"] / base[op]["MBps"]
                out[f"{op}_{name}_over_dir_inner"] = c[op]["inner_MBps"] / base[op]["inner_MBps"]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The part's JSON document (see the module docstring)."""
    args.work.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"load_avg_start": load_avg()}
    if args.image:
        image, doc["image"] = args.image, {"path": str(args.image), "generated": False}
    else:
        image = args.work / "image.raw"
        log(f"writing a {args.size_mib} MiB image")
        kinds = make_image(image, args.size_mib * MiB)
        doc["image"] = {"generated": True, "kinds_mib": {k: v / MiB for k, v in kinds.items()}}
    doc["image"]["size_mib"] = image.stat().st_size / MiB
    # a generated image is restored byte for byte; a guest disk's free blocks are not read
    # (skip-free), so its restores are compared with each other
    want = [] if args.image else [digest(image)]
    rounds: dict[str, list[dict[str, Any]]] = {c: [] for c in args.configs}
    for n in range(args.rounds):  # alternate the order: no configuration always goes first
        for c in args.configs if n % 2 == 0 else reversed(args.configs):
            rounds[c].append(one_round(c, image, want, args))
    configs = {c: best(r) for c, r in rounds.items()}
    doc["configs"] = configs
    if "dir-sqlite" in configs:
        doc["ratios"] = ratios(configs)
        doc["target_s3_over_dir"] = 0.8
    doc["load_avg_end"] = load_avg()
    if not args.image:
        image.unlink()
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="scratch directory (kept)")
    p.add_argument("--endpoint", required=True, help="the S3 endpoint (AWS variables set)")
    p.add_argument("--pg", required=True, help="postgresql://USER@HOST:PORT/postgres")
    p.add_argument("--image", type=Path, help="an existing raw image instead of a generated one")
    p.add_argument("--size-mib", type=int, default=1024, help="the generated image's size")
    p.add_argument("--servers", type=parse_servers, default={},
                   help="weed=PID,postgres=PID: their CPU is measured too")  # fmt: skip
    p.add_argument("--rounds", type=int, default=2, help="rounds, order alternated; best kept")
    p.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    args = p.parse_args(argv)
    return emit(run(args))


if __name__ == "__main__":
    sys.exit(main())

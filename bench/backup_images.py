"""Guest disk images for ``bench/bench_backup.py``: a Debian system disk and its "day 1".

The system disk is a thick raw file with a GPT label and one ext4 partition (1 MiB to 1 MiB
before the end, ``mkfs.ext4 -E nodiscard,lazy_itable_init=0``), populated with ``debootstrap
--variant=minbase bookworm``, 500 MiB of random files, four logs, a 64 MiB SQLite database and
``/usr`` files up to 60 % use. When debootstrap is missing or fails, a copy of ~300 MiB of this
machine's ``/usr`` stands in for the system: never silently: ``Images.system`` says which was
used and ``system_note`` why, every bench prints both and puts them in its JSON, and
``require_debootstrap`` makes the fallback an error. Day 1 is a copy changed through the mounted
filesystem as a guest would change it, with every write the guest's filesystem sends to the disk
logged (``write_trace.py``: ``day1-SIZE.writes``, what a real change tracker would record).
Sizes scale with the disk (a 1 GiB disk gets a quarter of everything). Every step is seeded, so
a rebuild gives the same kind of content.

The kernel makes no ``loopNp1`` nodes here, so the partition is attached with ``losetup -o
OFFSET --sizelimit SIZE``. Needs root, ``sgdisk``, ``mkfs.ext4`` and ``losetup``.

Units: bytes unless a name says otherwise; sectors are 512 bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypedDict

import write_trace

MiB, GiB = 1 << 20, 1 << 30
SECTOR = 512
PART_START = 1 * MiB
VERSION = 4  # bump when the content recipe changes: cached images are rebuilt
MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class Images:
    """The cached day-0 and day-1 images of one disk size, and how they were made."""

    day0: str
    day1: str
    size: int
    part_offset: int
    part_size: int
    system: str  # "debootstrap" or "copy of /usr"
    system_note: str  # debootstrap's suite and mirror, or why it could not be used
    used_pct: float  # df Use% of day 0
    files: int
    build_s: float
    day1_writes: str  # the guest's write log of day 1 (write_trace format)
    day1_write_requests: int  # write requests the guest's filesystem sent during day 1
    day1_written_bytes: int  # distinct bytes those requests covered


class DebootstrapUnavailable(RuntimeError):
    """debootstrap is missing or failed while the caller required a Debian system."""


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=True, text=True, capture_output=True)


@contextlib.contextmanager
def mounted(image: Path, offset: int, size: int) -> Iterator[Path]:
    """Mount the ext4 partition at ``offset`` of ``image``; unmounted (clean) on exit."""
    dev = run(
        "losetup", "-f", "--show", "-o", str(offset), "--sizelimit", str(size), str(image)
    ).stdout.strip()
    mnt = Path(tempfile.mkdtemp(prefix="vmaccel-bench-mnt-"))
    try:
        run("mount", dev, str(mnt))
        try:
            yield mnt
        finally:
            run("sync")
            run("umount", str(mnt))
    finally:
        run("losetup", "-d", dev)
        mnt.rmdir()


def partition_layout(size: int) -> tuple[int, int]:
    """(offset, size) of the one partition: 1 MiB to 1 MiB before the end."""
    return PART_START, size - 2 * PART_START


def write_gpt(image: Path, partitions: list[tuple[int, int]]) -> None:
    """A fresh GPT label with Linux partitions at the given (offset, size) byte ranges."""
    # Fixed GUIDs: two labels with the same layout are byte-identical, so a day-0 and a day-1
    # disk differ only where the guest wrote (sgdisk would pick random GUIDs otherwise).
    argv = ["sgdisk", "-o", "-U", "6b1c3e0a-0000-4000-8000-00000000d15c"]
    for n, (off, length) in enumerate(partitions, 1):
        first, last = off // SECTOR, (off + length) // SECTOR - 1
        argv += [f"-n{n}:{first}:{last}", f"-t{n}:8300", f"-u{n}:6b1c3e0a-0000-4000-8000-{n:012d}"]
    run(*argv, str(image))


def make_thick(path: Path, size: int) -> None:
    """A fully written file of zeros (no holes), like the reference image."""
    with path.open("wb") as f:
        zeros = bytes(16 * MiB)
        for _ in range(size // len(zeros)):
            f.write(zeros)
        f.write(bytes(size % len(zeros)))
        f.flush()
        os.fsync(f.fileno())


def install_system(root: Path, scale: float, require_debootstrap: bool) -> tuple[str, str]:
    """debootstrap minbase bookworm into root: ("debootstrap", suite and mirror). When it is
    missing or fails: an error if ``require_debootstrap``, else ~300 MiB (scaled) of this
    machine's /usr and ("copy of /usr", the reason), also printed on stderr."""
    try:
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(root), MIRROR],
            check=True,
            capture_output=True,
            timeout=900,
        )
        return "debootstrap", f"debootstrap --variant=minbase bookworm {MIRROR}"
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or b""
        reason = f"debootstrap failed: {exc} {detail.decode(errors='replace')[-300:]}".strip()
    if require_debootstrap:
        raise DebootstrapUnavailable(f"{reason} (apt-get install debootstrap; needs a mirror)")
    print(f"WARNING: not a Debian system disk: {reason}; using a copy of /usr", file=sys.stderr)
    for child in root.iterdir():
        if child.name == "lost+found":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    usr_files(root / "usr", int(300 * MiB * scale), 0, skip_under=None)
    for d in ("etc", "var/lib/dpkg", "var/log", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    return "copy of /usr", reason


def random_file(path: Path, size: int, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 4 * MiB)
            f.write(rng.randbytes(n))
            left -= n


def log_lines(rng: random.Random, size: int, start: int = 0) -> bytes:
    """syslog/access-log style text, ``size`` bytes or a little more."""
    hosts, paths = ["web1", "web2", "db1"], ["/", "/api/orders", "/login", "/static/app.js"]
    out, n = [], 0
    t = 1_700_000_000 + start
    while n < size:
        t += rng.randint(0, 3)
        if rng.random() < 0.5:
            line = (
                f"{time.strftime('%b %d %H:%M:%S', time.gmtime(t))} {rng.choice(hosts)} "
                f"sshd[{rng.randint(100, 99999)}]: Accepted publickey for "
                f"user{rng.randint(1, 50)} from 10.0.{rng.randint(0, 255)}."
                f"{rng.randint(0, 255)} port "
                f"{rng.randint(1024, 65535)}\n"
            )
        else:
            line = (
                f'10.1.{rng.randint(0, 255)}.{rng.randint(0, 255)} - - [{t}] "GET '
                f'{rng.choice(paths)}?id={rng.randint(1, 10**6)} HTTP/1.1" '
                f"{rng.choice((200, 200, 200, 304, 404))} {rng.randint(100, 90000)}\n"
            )
        out.append(line)
        n += len(line)
    return "".join(out).encode()


def order_doc(rng: random.Random, i: int) -> str:
    items = [
        {
            "sku": f"SKU-{rng.randint(1, 99999):05d}",
            "qty": rng.randint(1, 9),
            "price": round(rng.uniform(1, 500), 2),
        }
        for _ in range(rng.randint(1, 6))
    ]
    return json.dumps(
        {
            "order": i,
            "customer": f"cust{rng.randint(1, 20000)}",
            "status": rng.choice(["new", "paid", "shipped"]),
            "items": items,
            "note": rng.randbytes(rng.randint(40, 400)).hex(),
        }
    )


def make_db(path: Path, size: int, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, doc TEXT NOT NULL)")
    i = 0
    while True:
        con.executemany(
            "INSERT INTO orders VALUES (?, ?)",
            [(i + k, order_doc(rng, i + k)) for k in range(2000)],
        )
        i += 2000
        con.commit()
        if path.stat().st_size >= size:
            break
    con.close()


def host_usr_walk(skip_under: Path | None = Path("/usr/share/doc")) -> Iterator[Path]:
    """Regular files of this machine's /usr in sorted-walk order (a deterministic sequence)."""
    for top, dirs, files in os.walk("/usr"):
        dirs.sort()
        for name in sorted(files):
            p = Path(top) / name
            if (
                p.is_file()
                and not p.is_symlink()
                and (skip_under is None or not p.is_relative_to(skip_under))
            ):
                yield p


def usr_files(
    dest: Path,
    budget: int,
    skip: int,
    skip_under: Path | None = None,
    fs_root: Path | None = None,
    stop_pct: float = 100.0,
) -> tuple[int, int]:
    """Copy host /usr files (after the first ``skip``) under dest until ``budget`` bytes are
    copied or the filesystem at fs_root reaches stop_pct use. Returns (files, bytes)."""
    files = copied = 0
    for n, src in enumerate(host_usr_walk(skip_under)):
        if n < skip:
            continue
        if copied >= budget or (fs_root is not None and used_pct(fs_root) >= stop_pct):
            break
        target = dest / src.relative_to("/usr")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(src, target)
        except OSError:
            continue
        files += 1
        copied += src.stat().st_size
    return skip + files, copied


def used_pct(root: Path) -> float:
    st = os.statvfs(root)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    avail = st.f_bavail * st.f_frsize
    return 100.0 * used / (used + avail)


def count_files(root: Path) -> int:
    return sum(len(f) for _, _, f in os.walk(root))


class Day0Info(TypedDict):
    system: str
    system_note: str
    usr_walked: int
    used_pct: float
    files: int


def populate_day0(
    mnt: Path, scale: float, rng: random.Random, require_debootstrap: bool
) -> Day0Info:
    system, note = install_system(mnt, scale, require_debootstrap)
    random_file(mnt / "srv/data/big.bin", int(200 * MiB * scale), rng)
    for i in range(30):
        random_file(mnt / f"srv/data/blob{i:02d}.bin", int(10 * MiB * scale), rng)
    for name in ("syslog", "auth.log", "access.log", "app.log"):
        (mnt / "var/log" / name).write_bytes(log_lines(rng, int(8 * MiB * scale)))
    make_db(mnt / "var/lib/app/orders.db", int(64 * MiB * scale), rng)
    walked, _ = usr_files(mnt / "srv/usr-copy", 10**12, 0, fs_root=mnt, stop_pct=60.0)
    return {
        "system": system,
        "system_note": note,
        "usr_walked": walked,
        "used_pct": round(used_pct(mnt), 1),
        "files": count_files(mnt),
    }


def rewrite_dpkg_style(mnt: Path, count: int, rng: random.Random) -> int:
    """Replace ``count`` files of 64 KiB-1 MiB under usr/lib the way dpkg does: write
    ``.dpkg-new`` with 8 scattered byte changes, then rename it over the old file."""
    done = nbytes = 0
    for top, dirs, files in os.walk(mnt / "usr/lib"):
        dirs.sort()
        for name in sorted(files):
            p = Path(top) / name
            if done >= count:
                return nbytes
            if p.is_symlink() or not 64 * 1024 <= p.stat().st_size <= MiB:
                continue
            data = bytearray(p.read_bytes())
            for _ in range(8):
                data[rng.randrange(len(data))] ^= 0x5A
            new = p.with_name(p.name + ".dpkg-new")
            new.write_bytes(data)
            os.chmod(new, p.stat().st_mode)
            os.replace(new, p)
            done += 1
            nbytes += len(data)
    return nbytes


def change_day1(mnt: Path, scale: float, usr_walked: int, rng: random.Random) -> dict[str, object]:
    """The guest's day 1, as the module docstring lists it."""
    (mnt / "srv/data/big.bin").unlink()
    for i in range(5):
        random_file(mnt / f"srv/data/new{i}.bin", int(10 * MiB * scale), rng)
    _, pkg = usr_files(mnt / "srv/usr-copy", int(55 * MiB * scale), usr_walked)
    rewritten = rewrite_dpkg_style(mnt, max(4, int(37 * scale)), rng)
    con = sqlite3.connect(mnt / "var/lib/app/orders.db")
    top = con.execute("SELECT max(id) FROM orders").fetchone()[0]
    con.executemany(
        "UPDATE orders SET doc = ? WHERE id = ?",
        [(order_doc(rng, i), i) for i in rng.sample(range(top), int(300 * scale))],
    )
    con.executemany(
        "INSERT INTO orders VALUES (?, ?)",
        [(top + 1 + k, order_doc(rng, top + 1 + k)) for k in range(int(2000 * scale))],
    )
    con.commit()
    con.close()
    for name in ("syslog", "auth.log", "access.log", "app.log"):
        with (mnt / "var/log" / name).open("ab") as f:
            f.write(log_lines(rng, int(1 * MiB * scale), start=10**6))
    (mnt / "etc/vmaccel-bench.conf").write_text("changed = day1\n")
    return {"package_bytes": pkg, "rewritten_bytes": rewritten}


def build(dir_: Path, size: int, require_debootstrap: bool = False) -> Images:
    """Build (or reuse) day0-SIZE.img, day1-SIZE.img and day1-SIZE.writes under dir_.

    A cached set made with the /usr fallback is rebuilt when ``require_debootstrap``."""
    tag = f"{size // GiB}g" if size % GiB == 0 else str(size)
    day0, day1 = dir_ / f"day0-{tag}.img", dir_ / f"day1-{tag}.img"
    writes = dir_ / f"day1-{tag}.writes"
    meta_path = dir_ / f"images-{tag}.json"
    off, psize = partition_layout(size)
    if meta_path.exists() and all(p.exists() for p in (day0, day1, writes)):
        meta = json.loads(meta_path.read_text())
        cached = meta.get("version") == VERSION and Images(**meta["images"])
        if cached and (cached.system == "debootstrap" or not require_debootstrap):
            return cached
    dir_.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    scale, rng = size / (4 * GiB), random.Random(20240601)
    make_thick(day0, size)
    write_gpt(day0, [(off, psize)])
    dev = run(
        "losetup", "-f", "--show", "-o", str(off), "--sizelimit", str(psize), str(day0)
    ).stdout.strip()
    try:
        run("mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=0", dev)
    finally:
        run("losetup", "-d", dev)
    with mounted(day0, off, psize) as mnt:
        info = populate_day0(mnt, scale, rng, require_debootstrap)
    run("cp", "--sparse=never", str(day0), str(day1))
    with write_trace.traced(day1, writes) as guest_disk, mounted(guest_disk, off, psize) as mnt:
        change_day1(mnt, scale, info["usr_walked"], rng)
    log = write_trace.read_log(writes)
    images = Images(
        str(day0),
        str(day1),
        size,
        off,
        psize,
        info["system"],
        info["system_note"],
        info["used_pct"],
        info["files"],
        round(time.monotonic() - started, 1),
        str(writes),
        log.requests,
        log.distinct,
    )
    meta_path.write_text(json.dumps({"version": VERSION, "images": asdict(images)}, indent=1))
    return Images(**json.loads(meta_path.read_text())["images"])


def summary(images: Images) -> str:
    """One line naming the system the images hold (every bench prints it)."""
    text = f"{images.system}" + ("" if images.system == "debootstrap" else " (NOT Debian)")
    return f"{text}: {images.system_note}"


def widen(src: Images, dir_: Path, size: int) -> tuple[Path, Path]:
    """The same partition content on a ``size`` (sparse) disk: the GPT rebuilt with the ext4
    partition at the same place plus a second, empty, unformatted partition up to the end."""
    tag = f"{size // GiB}g"
    out = (dir_ / f"day0-{tag}.img", dir_ / f"day1-{tag}.img")
    stamp = dir_ / f"wide-{tag}.json"
    key = {
        "version": VERSION,
        "gpt": "fixed-guids",
        "from": [os.stat(src.day0).st_mtime, os.stat(src.day1).st_mtime],
    }
    if stamp.exists() and json.loads(stamp.read_text()) == key and all(p.exists() for p in out):
        return out
    second = src.part_offset + src.part_size + PART_START
    for image, dst in zip((src.day0, src.day1), out, strict=True):
        dst.unlink(missing_ok=True)
        with open(dst, "wb") as f:
            f.truncate(size)
        write_gpt(dst, [(src.part_offset, src.part_size), (second, size - second - PART_START)])
        run(
            "dd",
            f"if={image}",
            f"of={dst}",
            "bs=4M",
            f"skip={src.part_offset}",
            f"seek={src.part_offset}",
            f"count={src.part_size}",
            "iflag=skip_bytes,count_bytes",
            "oflag=seek_bytes",
            "conv=sparse,notrunc",
        )
    stamp.write_text(json.dumps(key))
    return out

"""What encrypting the catalog index with SQLCipher would cost, on the catalog's own schema.

Runs the index-heavy work of vmaccel (chunk rows committed per pack, dedup lookups, storing a
file listing, ``files find`` over a million entries, ``backups list``) against the same
SQLCipher build with and without a key, so the ratio is encryption alone. ``sqlcipher3`` is
not a dependency of vmaccel: install it into a scratch directory and run with the project's
interpreter, e.g. ``pip install --target DIR sqlcipher3`` and
``PYTHONPATH=DIR .venv/bin/python bench/bench_index_cipher.py --json``.
The README's Security section quotes the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository root, not bench/

from vmaccel.catalog.index.schema import migrations  # noqa: E402

CHUNKS = 200_000
PACK_BATCH = 2_000  # chunk rows committed per sealed pack
LOOKUPS = 100_000
FILES = 100_000
LISTINGS = 10
WORDS = ["etc", "usr", "lib", "Windows", "System32", "home", "Program Files", "share", "doc"]
FIND = (
    "SELECT b.id, b.vm, b.started, i.disk, v.volume, f.path, f.kind, f.size, f.mtime_ns"
    " FROM file_entry f JOIN image_volume v ON v.listing_id = f.listing_id"
    " JOIN image i ON i.id = v.image_id JOIN backup b ON b.id = i.backup_id"
    " WHERE b.state = 'complete' AND f.path LIKE ? ESCAPE '\\'"
    " ORDER BY b.started, b.id, i.disk, v.volume, f.path LIMIT 1000"
)
BACKUPS = (
    "SELECT id, uuid, vm, started, finished, state, meta FROM backup"
    " WHERE state = 'complete' ORDER BY started, id"
)


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fn()``. CPU time is what encryption costs this process; wall
    time also counts fsync waits and whatever else the machine runs."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def figures(name: str, *runs: tuple[float, float], best: bool = False) -> dict[str, float]:
    """``name wall s`` and ``name cpu s``: the mean of ``runs``, or the minimum if ``best``."""
    pick = min if best else statistics.mean
    return {f"{name} wall s": pick(r[0] for r in runs), f"{name} cpu s": pick(r[1] for r in runs)}


class Db:
    """Opens the index file as vmaccel does (WAL, synchronous=FULL), keyed as asked."""

    def __init__(self, module: Any, path: Path, key: str) -> None:
        self.module, self.path, self.key = module, path, key

    def connect(self) -> Any:
        conn = self.module.connect(str(self.path), isolation_level=None, timeout=30)
        if self.key:
            conn.execute(f"PRAGMA key = {self.key}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn


def schema(conn: Any) -> None:
    """The catalog's tables, from the migrations themselves (sqlite-utils is not needed)."""

    class Shim:
        def executescript(self, sql: str) -> None:
            conn.executescript(sql)

    for migration in migrations._migrations:
        migration.fn(cast(Any, Shim()))


def listing(rnd: random.Random, n: int) -> list[tuple[int, str, str, int, int]]:
    rows = []
    for k in range(FILES):
        parts = "/".join(rnd.choice(WORDS) for _ in range(3))
        ext = rnd.choice(["txt", "dll", "so", "conf"])
        rows.append((n, f"/{parts}/file{k}_{n}.{ext}", "file", rnd.randrange(1 << 20), 0))
    return sorted(rows, key=lambda r: r[1])


def write_phase(db: Db, rnd: random.Random) -> dict[str, float]:
    conn = db.connect()
    schema(conn)
    ids = [rnd.randbytes(32) for _ in range(CHUNKS)]
    out = chunk_figures(conn, ids, rnd)
    conn.execute("BEGIN")
    for b in range(1000):
        conn.execute(
            "INSERT INTO backup (uuid, vm, started, finished, state) VALUES (?, ?, ?, ?, ?)",
            (f"u{b}", f"vm{b % 50}", b, b + 1, "complete"),
        )
    conn.execute("COMMIT")
    out |= listing_figures(conn, rnd)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return out


def chunk_figures(conn: Any, ids: list[bytes], rnd: random.Random) -> dict[str, float]:
    """Insert ``ids`` as chunk rows in pack-sized transactions, then look half of them up
    (the other half of the probes miss), as a backup's dedup does."""
    conn.execute("INSERT INTO pack VALUES (1, 'p', 0, 0, 'live')")

    def insert_chunks() -> None:
        for start in range(0, CHUNKS, PACK_BATCH):
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO chunk VALUES (?, 1, 0, 40000, 65536, 1, 3, 0)",
                [(i,) for i in ids[start : start + PACK_BATCH]],
            )
            conn.execute("COMMIT")

    out = figures("insert 200k chunk rows", timed(insert_chunks))
    probes = [ids[rnd.randrange(CHUNKS)] if k % 2 else rnd.randbytes(32) for k in range(LOOKUPS)]
    out |= figures(
        "100k chunk lookups",
        timed(
            lambda: [
                conn.execute("SELECT 1 FROM chunk WHERE id = ?", (p,)).fetchall() for p in probes
            ]
        ),
    )
    return out


def listing_figures(conn: Any, rnd: random.Random) -> dict[str, float]:
    """Store LISTINGS file-catalog listings of FILES entries, one transaction each."""
    stores = []
    for n in range(1, LISTINGS + 1):
        rows = listing(rnd, n)

        def store(rows: list[tuple[int, str, str, int, int]] = rows, n: int = n) -> None:
            conn.execute("BEGIN")
            conn.execute(
                "INSERT INTO listing (digest, entries) VALUES (?, ?)", (rnd.randbytes(32), FILES)
            )
            conn.executemany(
                "INSERT INTO file_entry (listing_id, path, kind, size, mtime_ns)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute(
                "INSERT INTO image (backup_id, disk, size, block_size, fanout, depth)"
                " VALUES (?, 'd', 1, 1, 1, 1)",
                (n,),
            )
            conn.execute("INSERT INTO image_volume VALUES (?, 'p1', 'ext4', ?)", (n, n))
            conn.execute("COMMIT")

        stores.append(timed(store))
    return figures("store a 100k-file listing", *stores)


def read_phase(db: Db) -> dict[str, float]:
    """Each query on a new connection: an empty page cache, as in a new CLI process."""

    def query(sql: str, params: tuple[object, ...] = ()) -> Callable[[], object]:
        def run() -> object:
            conn = db.connect()
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()

        return run

    listed = [timed(query(BACKUPS)) for _ in range(5)]
    found = [timed(query(FIND, ("%/file7777_%",))) for _ in range(3)]
    return figures("open + backups list", *listed, best=True) | figures(
        "open + files find (1M entries)", *found, best=True
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--reps", type=int, default=3, help="rounds (cases interleaved; best kept)")
    args = ap.parse_args()
    try:
        import sqlcipher3  # type: ignore[import-not-found]  # optional, see above
    except ImportError:
        print("sqlcipher3 is not installed: pip install sqlcipher3", file=sys.stderr)
        return 2
    raw = f"\"x'{secrets.token_hex(32)}'\""  # a raw 256-bit key, as derived from the master key
    cases = {"no key": "", "raw key": raw, "passphrase key (PBKDF2)": "'a passphrase'"}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):  # interleaved, so a busy moment does not hit one case only
            for n, (name, key) in enumerate(cases.items()):
                db = Db(sqlcipher3, Path(tmp) / f"{rep}-{n}.db", key)
                got = {**write_phase(db, random.Random(1)), **read_phase(db)}
                got["file MiB"] = db.path.stat().st_size / 2**20
                rounds[name].append(got)
                db.path.unlink()
                if not args.json:
                    print(rep, name, json.dumps(got), flush=True)
    results = {name: {k: min(r[k] for r in rs) for k in rs[0]} for name, rs in rounds.items()}
    base = results["no key"]
    ratios = {
        case: {k: round(v / base[k], 2) for k, v in r.items() if k != "file MiB"}
        for case, r in results.items()
        if case != "no key"
    }
    version = sqlcipher3.connect(":memory:").execute("PRAGMA cipher_version").fetchone()[0]
    doc = {"sqlcipher": version, "seconds": results, "ratio to no key": ratios}
    print(json.dumps(doc, indent=1) if args.json else json.dumps(ratios, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

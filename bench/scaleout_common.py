"""What the parts of the scale-out bench share: paths, a child run with its own rusage, the
one PostgreSQL server (new databases on it) and new buckets on the S3 endpoint.

Every part (``scaleout_store.py``, ``scaleout_proxies.py``, ``scaleout_catalog.py``) is a
script of its own that ``bench_scaleout.py`` runs as a child, so each part's peak RSS is its
own (``ru_maxrss`` from ``wait4``), not inflated by an earlier part.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from serve_bed import VMACCEL, log  # noqa: E402 - after ROOT is on the path
from workload import load_avg  # noqa: E402

__all__ = ["BENCH_DIR", "PY", "ROOT", "VMACCEL", "MiB", "emit", "load_avg", "log",
           "new_bucket", "new_database", "parse_servers", "rounded", "server_cpu", "tree_cpu",
           "wait4"]  # fmt: skip

MiB = 1 << 20
PY = str(ROOT / ".venv/bin/python")
BENCH_DIR = Path("/var/tmp/vmaccel-bench")  # noqa: S108 - the benches' shared cache; scratch in scaleout-*


def wait4(
    argv: list[str], env: dict[str, str] | None = None, servers: dict[str, int] | None = None
) -> dict[str, Any]:
    """``bench_serve.wait4`` (the child's ``wall_s``, ``cpu_s``, peak ``rss_mib`` and
    ``stdout``; raises with its stderr when it exits non-zero) plus ``server_cpu_s``: the CPU
    seconds each of ``servers`` (name -> PID) spent meanwhile. (Imported here: the catalog
    part, which runs no child, keeps its peak RSS free of the serve bench's imports.)"""
    from bench_serve import wait4 as _wait4

    before = server_cpu(servers or {})
    run = _wait4(argv, dict(os.environ) if env is None else env)
    after = server_cpu(servers or {})
    run["server_cpu_s"] = {k: after[k] - before[k] for k in after}
    return run


def emit(doc: dict[str, Any], digits: int = 3) -> int:
    """Print a part's JSON document (floats to ``digits``) on stdout for ``bench_scaleout``;
    returns the exit code 0."""
    json.dump(rounded(doc, digits), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def new_database(server_url: str) -> str:
    """A new empty database on the server of ``server_url`` (password from ``PGPASSWORD``);
    its URL (same user, host and port)."""
    import psycopg

    name = f"bench{secrets.token_hex(5)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + "/" + name


def new_bucket(endpoint: str) -> str:
    """A new empty bucket on ``endpoint`` (credentials from the AWS variables); its name."""
    from vmaccel.catalog.s3client import S3Location, make_client

    name = f"bench{secrets.token_hex(5)}"
    make_client(S3Location(name, "", endpoint), max_attempts=1).create_bucket(Bucket=name)
    return name


def rounded(doc: Any, digits: int = 3) -> Any:
    """``doc`` with every float rounded (for the JSON report)."""
    if isinstance(doc, float):
        return round(doc, digits)
    if isinstance(doc, dict):
        return {k: rounded(v, digits) for k, v in doc.items()}
    if isinstance(doc, list):
        return [rounded(v, digits) for v in doc]
    return doc


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, list[str]] | None:
    """(ppid, fields after the command) of a live process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[1]), fields


def tree_cpu(pid: int) -> float:
    """CPU seconds (user+system) of process ``pid`` and all its descendants so far: live ones
    from their own ``stat``, reaped ones through their parents' ``cutime``/``cstime``."""
    parents: dict[int, list[int]] = {}
    own: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            ppid, f = st
            parents.setdefault(ppid, []).append(int(entry.name))
            # stat(5) fields 14-17: utime stime cutime cstime (index 11-14 after the command)
            own[int(entry.name)] = sum(int(x) for x in f[11:15]) / CLK_TCK
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += own.get(p, 0.0)
        todo += parents.get(p, [])
    return total


def server_cpu(pids: dict[str, int]) -> dict[str, float]:
    """``tree_cpu`` of each named server process now (see ``--servers``)."""
    return {name: tree_cpu(pid) for name, pid in pids.items()}


def parse_servers(text: str) -> dict[str, int]:
    """``weed=123,postgres=456`` (the servers' PIDs the parent passes down)."""
    return {k: int(v) for k, v in (kv.split("=", 1) for kv in text.split(",") if kv)}


def child_pid(name: str) -> int:
    """The PID of this process's child called ``name`` (its ``comm``)."""
    for entry in Path("/proc").iterdir():
        st = _stat(int(entry.name)) if entry.name.isdigit() else None
        if st is not None and st[0] == os.getpid():
            try:
                if (entry / "comm").read_text().strip() == name:
                    return int(entry.name)
            except FileNotFoundError:
                continue
    raise LookupError(f"no child process {name}")

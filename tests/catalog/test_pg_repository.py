"""A repository whose catalog is a PostgreSQL database (``repo init --catalog``), through the
command line: a standalone backup restores byte-equal; the password is never stored; two
backup processes and gc processes race on one catalog and lose nothing; the maintenance lock
and the per-VM lock hold across repository directories (what two machines have)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.catalog.pgserver import PASSWORD, PostgresServer, pg, postgres  # noqa: F401
from tests.catalog.standalone import Cli, random_image
from vmaccel.catalog.lease import survey
from vmaccel.catalog.repository import Repository
from vmaccel.vocabulary.errors import RepositoryLocked

MIB = 1024 * 1024
VMACCEL = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "vmaccel"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


def _init(cli: Cli, repo: Path, server: PostgresServer) -> str:
    url = server.database()
    cli.ok("repo", "init", "--repo", repo, "--catalog", url)
    return url


def test_a_standalone_backup_restores_and_no_password_is_stored(
    pg: PostgresServer,  # noqa: F811
    cli: Cli,
    tmp_path: Path,
) -> None:
    repo, image = tmp_path / "repo", tmp_path / "disk.img"
    url = _init(cli, repo, pg)
    assert json.loads((repo / "catalog.json").read_text()) == {"kind": "postgresql", "url": url}
    assert not any(PASSWORD.encode() in f.read_bytes() for f in repo.rglob("*") if f.is_file())
    data = random_image(image, 3 * MIB, seed=1)
    b1 = cli.backup(repo, image, "vm1")
    assert cli.restored(repo, b1, tmp_path / "r1") == data
    cli.ok("verify", "--repo", repo)
    refused = cli("repo", "init", "--repo", tmp_path / "r2", "--catalog",
                  url.replace("postgres@", f"postgres:{PASSWORD}@"))  # fmt: skip
    assert refused.rc == 2 and "never stores one" in refused.err
    taken = cli("repo", "init", "--repo", tmp_path / "r3", "--catalog", url)
    assert taken.rc != 0 and "already holds a vmaccel catalog" in taken.err


def _start(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(VMACCEL), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _backup(repo: Path, image: Path, name: str) -> subprocess.Popen[str]:
    return _start("backup", "--repo", repo, "--source", f"file:{image}", "--name", name,
                  "--no-file-index", "--json", "--lock-wait", "60")  # fmt: skip


def _gc_until(dirs: list[Path], racers: list[subprocess.Popen[str]]) -> int:
    """Run gc (grace 0) from each directory in turn until every racer ended; returns how
    many gc runs started while a racer still ran."""
    runs = 0
    while any(r.poll() is None for r in racers):
        gc = subprocess.run([str(VMACCEL), "gc", "--repo", dirs[runs % len(dirs)], "--grace",
                             "0", "--lock-wait", "60"], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
        assert gc.returncode == 0, gc.stderr
        runs += 1
    return runs


@pytest.mark.parametrize("machines", [1, 2])
def test_two_writers_and_gc_at_once_lose_nothing(
    pg: PostgresServer,  # noqa: F811
    cli: Cli,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    machines: int,
) -> None:
    """One directory with its packs in it, or two directories (two machines) sharing an S3
    bucket and the PostgreSQL catalog: the backups of vmA and vmB (on different machines)
    and gc (from both) run at once."""
    dirs = [tmp_path / f"machine{n}" for n in range(machines)]
    url = pg.database()
    store: tuple[str, ...] = ()
    if machines > 1:
        s3 = request.getfixturevalue("s3")
        store = ("--store", f"s3://{s3.bucket()}/vm", "--endpoint", s3.endpoint)
    cli.ok("repo", "init", "--repo", dirs[0], "--catalog", url, *store)
    for other in dirs[1:]:
        shutil.copytree(dirs[0], other)  # joining: store.json and catalog.json
    shared = random_image(tmp_path / "shared", 4 * MIB, seed=7)
    # garbage that the racing backups will deduplicate against: the shared blocks, left
    # unreferenced by pruning the only backup that held them
    cli.backup(dirs[0], tmp_path / "shared", "old")
    random_image(tmp_path / "other", 1 * MIB, seed=8)
    cli.backup(dirs[-1], tmp_path / "other", "old")
    cli.ok("prune", "--repo", dirs[0], "--keep-last", "1")
    images = {}
    for n, vm in enumerate(("vmA", "vmB")):
        images[vm] = shared + random_image(tmp_path / f"{vm}.tail", 2 * MIB, seed=10 + n)
        (tmp_path / f"{vm}.img").write_bytes(images[vm])
    racers = [
        _backup(dirs[n % machines], tmp_path / f"{vm}.img", vm) for n, vm in enumerate(images)
    ]
    assert _gc_until(dirs, racers) >= 1
    ids = {}
    for vm, racer in zip(images, racers, strict=True):
        out, err = racer.communicate(timeout=300)
        assert racer.returncode == 0, err
        ids[vm] = int(json.loads(out)["vms"][0]["backup_id"])
    cli.ok("gc", "--repo", dirs[-1], "--grace", "0")
    with Repository.open(dirs[0]) as r:
        data_chunks, _, _ = r.index.chunk_totals()
        # every block stored once: the shared 4 MiB, two tails and the kept "old" backup
        assert data_chunks == (4 + 2 + 2 + 1) * MIB // (64 * 1024)
    for n, (vm, backup_id) in enumerate(ids.items()):
        restored = cli.restored(dirs[(n + 1) % machines], backup_id, tmp_path / f"{vm}.out")
        assert restored == images[vm]
    cli.ok("verify", "--repo", dirs[-1], "--full")


def test_maintenance_and_vm_locks_hold_across_repository_directories(
    pg: PostgresServer,  # noqa: F811
    cli: Cli,
    tmp_path: Path,
) -> None:
    one = tmp_path / "machine1"
    _init(cli, one, pg)
    two = tmp_path / "machine2"
    shutil.copytree(one, two)  # another machine's directory: own lock files, same catalog
    with Repository.open(one, write=True):
        with pytest.raises(RepositoryLocked, match="maintenance run"):
            Repository.open(two, write=True)
        with pytest.raises(RepositoryLocked):
            Repository.open(two, write=True, lock_wait=0.3)
    holder = Repository.open(one, write=True)
    threading.Timer(0.3, holder.close).start()
    with Repository.open(two, write=True, lock_wait=30):  # waits for the holder, then runs
        pass
    with (
        Repository.open(one, lease="backup") as a,
        Repository.open(two, lease="backup") as b,
        a.vm_lock("vm1"),
    ):
        with pytest.raises(RepositoryLocked, match="writer backing up 'vm1'"), b.vm_lock("vm1"):
            pass
        with b.vm_lock("vm2"):
            # each machine sees the other's lease as live (no flock across machines)
            assert {lease.id for lease in b.index.leases()} == {a.lease.id, b.lease.id}  # type: ignore[union-attr]


_HOLDER = """
import sys, time
from pathlib import Path
from vmaccel.catalog.lease import survey
from vmaccel.catalog.repository import Repository
repo = Repository.open(Path(sys.argv[1]), lease="backup")
print(repo.lease.id, flush=True)
time.sleep(300)
"""


def test_the_lease_of_a_killed_writer_is_stale_on_every_machine(
    pg: PostgresServer,  # noqa: F811
    cli: Cli,
    tmp_path: Path,
) -> None:
    one, two = tmp_path / "machine1", tmp_path / "machine2"
    _init(cli, one, pg)
    shutil.copytree(one, two)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(one)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        lease_id = int(holder.stdout.readline())
        with Repository.open(two) as r:  # the other machine: no lock file of that lease here
            assert survey(r.index, two).live_ids == {lease_id}
            holder.kill()
            holder.wait()
            deadline = time.monotonic() + 10
            while (seen := survey(r.index, two)).live_ids and time.monotonic() < deadline:
                time.sleep(0.05)
            assert seen.live_ids == frozenset() and r.index.leases() == []
            assert r.index.last_lease_id() == lease_id
    finally:
        holder.kill()
        holder.wait()

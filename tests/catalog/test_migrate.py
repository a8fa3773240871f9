"""``repo migrate``: a local repository moved to S3 (SeaweedFS) and PostgreSQL, through the
command line. The copy lists the same backups, restores the same bytes, passes
``verify --full`` and holds every catalog row with its id; the source never changes; an
encrypted repository keeps its passphrase and gets Object Lock; an interrupted migration
leaves no repository behind and a new one succeeds; usage errors are one line."""

from __future__ import annotations

import hashlib
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.catalog.conftest import PASSPHRASE, History, _write_backup, build_history, small_config
from tests.catalog.pgserver import PostgresServer, pg, postgres  # noqa: F401
from tests.catalog.s3server import SeaweedServer
from tests.catalog.standalone import Cli
from vmaccel.catalog.bootcheck import put_screenshot
from vmaccel.catalog.index.jobs import DiskTaskRow
from vmaccel.catalog.index.proxies import NewProxy
from vmaccel.catalog.index.records import FileRecord
from vmaccel.catalog.index.reports import ReportRow
from vmaccel.catalog.index.tablecopy import INTERNAL
from vmaccel.catalog.lock import FileLock
from vmaccel.catalog.migrate import MigrationTarget, migrate
from vmaccel.catalog.objectstore import ObjectStoreUnavailable
from vmaccel.catalog.repository import Repository
from vmaccel.catalog.s3lock import DAY
from vmaccel.catalog.s3store import S3ObjectStore
from vmaccel.catalog.storeconfig import StoreSpec
from vmaccel.daemon.lock import DaemonLock
from vmaccel.vocabulary.errors import RepositoryNotFound


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


def _add_catalog_rows(path: Path) -> None:
    """A row in every table that the backups did not fill, and a screenshot object."""
    with Repository.open(path, write=True) as repo:
        idx, first = repo.index, repo.backups()[0]
        image = repo.images(first)[0]
        put_screenshot(repo.store, repo.codec, first.uuid, b"a screen")
        with idx.writing():
            idx.put_policy("nightly", {"vms": ["vm1"]}, 1.0, "admin")
            job = idx.add_job("policy", "nightly", "schedule", 2.0, 2.0)
            idx.add_vm_jobs(job, ["vm1", "vm2"])
            vm_job = idx.vm_jobs(job)[0].id
            task = DiskTaskRow(0, vm_job, 1, "disk0", "succeeded", "full", None, 10, 10, 5,
                               1.5, None, ("slow",))  # fmt: skip
            idx.add_disk_tasks([task])
            idx.add_log(job, vm_job, 3.0, "info", "started")
            idx.add_token("ci", "read", b"\x01" * 32, "abcd", 4.0)
            user = idx.add_user("alice", "admin", "scrypt$hash", 5.0)
            idx.delete_user(idx.add_user("bob", "viewer", "scrypt$hash", 5.5))  # id 2 is gone
            idx.add_session(b"\x02" * 32, user, "csrf", 6.0, time.time() + 3600)
            idx.add_pattern("vm1", first.id, 7.0, "[]")
            idx.add_report(ReportRow(vm_job, 1, "proxy1", 8.0, "{}"))
            idx.claim_proxy_name(NewProxy("proxy1", "h", 1, ("ds1",), 2, 30.0), 9.0)
            files = [FileRecord("/etc/passwd", "file", 10, 1, 2, 0o644),
                     FileRecord("/odd-\udcff", "file", 1, None)]  # fmt: skip
            idx.attach_listing(image.id, "p1", "ext4", idx.add_listing(b"\x03" * 32, files))


def _files(path: Path) -> dict[str, str]:
    """Every file below ``path`` -> the SHA-256 of its bytes; but SQLite's -wal/-shm, and
    the daemon's lock file, which migrate takes (an empty file, made if missing)."""
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file() and not f.name.endswith(("-wal", "-shm")) and f.name != "daemon.lock"
    }


def _pg_value(table: str, column: str, value: Any) -> Any:
    if (table, column) == ("file_entry", "path"):  # the form tag of pgschema
        raw = bytes(value)
        return raw[1:].decode() if raw[:1] == b"\x00" else raw[1:]
    return value


def _tables(src: Path, url: str) -> dict[str, tuple[list[Any], list[Any]]]:
    """Table -> (its rows in the SQLite index, its rows in PostgreSQL), sorted."""
    db = sqlite3.connect(src / "index.db")
    out = {}
    try:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        with psycopg.connect(url) as conn:
            for table in (n for n in names if n not in INTERNAL):
                cols = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
                names = ", ".join(f'"{c}"' for c in cols)
                select = f'SELECT {names} FROM "{table}"'  # noqa: S608 - schema names
                theirs = conn.execute(select).fetchall()
                mine = [tuple(r) for r in db.execute(select)]
                pgrows = [tuple(_pg_value(table, c, v) for c, v in zip(cols, r, strict=True))
                          for r in theirs]  # fmt: skip
                out[table] = (sorted(mine, key=repr), sorted(pgrows, key=repr))
    finally:
        db.close()
    return out


def _migrate(cli: Cli, hist: History, dest: Path, s3: SeaweedServer, url: str, *extra: str,
             bucket: str | None = None) -> Any:  # fmt: skip
    bucket = bucket or s3.bucket()
    return cli("repo", "migrate", dest, "--repo", hist.path, "--store", f"s3://{bucket}/vm",
               "--endpoint", s3.endpoint, "--catalog", url, "--json", *extra)  # fmt: skip


def test_a_repository_moves_whole_and_the_source_stays_as_it_was(
    s3: SeaweedServer,
    pg: PostgresServer,  # noqa: F811
    cli: Cli,
    tmp_path: Path,
) -> None:
    hist = build_history(tmp_path / "src", small_config())
    _add_catalog_rows(hist.path)
    before, url, dest = _files(hist.path), pg.database(), tmp_path / "dest"
    done = _migrate(cli, hist, dest, s3, url)
    assert done.rc == 0, done.err
    report = done.json
    assert _files(hist.path) == before  # not one byte of the source changed
    with Repository.open(hist.path) as repo:
        objects = [*repo.store.list_prefix("packs/"), *repo.store.list_prefix("backups/"),
                   *repo.store.list_prefix("screenshots/"), repo.store.stat("config")]  # fmt: skip
        source_ids = [(b.id, b.uuid, b.vm, b.meta) for b in repo.backups()]
    assert report["objects"] == len(objects) and report["bytes"] == sum(o.size for o in objects)
    tables = _tables(hist.path, url)
    assert report["rows"] == {t: len(mine) for t, (mine, _) in tables.items()}
    for table, (mine, theirs) in tables.items():
        assert mine == theirs, table
        assert mine or table == "lease", f"the test left {table} empty"
    # the same backups, the same bytes, verify --full
    copy = History(dest, None, hist.expected)
    with copy.open() as repo:
        assert [(b.id, b.uuid, b.vm, b.meta) for b in repo.backups()] == source_ids
    for (backup_id, disk), data in hist.expected.items():
        assert copy.read(backup_id, disk) == data
    cli.ok("verify", "--full", "--repo", dest)
    assert (cli.ok("backups", "list", "--repo", dest, "--json").json
            == cli.ok("backups", "list", "--repo", hist.path, "--json").json)  # fmt: skip
    # ids go on after the copied ones: a new backup, a new job
    with Repository.open(dest, lease="backup") as repo:
        new_id, _ = _write_backup(repo, "vm3", {"disk0": b"\x07" * 8192}, {})
        with repo.index.writing():
            job = repo.index.add_job("policy", "nightly", "manual", None, 9.0)
            user = repo.index.add_user("carol", "viewer", "scrypt$hash", 9.5)
    assert new_id > max(b[0] for b in source_ids) and job == 2
    assert user == 3  # never bob's id: the sequences continue after every id ever issued


def test_an_encrypted_repository_keeps_its_passphrase_and_gets_object_lock(
    s3: SeaweedServer,
    pg: PostgresServer,  # noqa: F811
    cli: Cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hist = build_history(tmp_path / "src", small_config(encryption="repokey"), PASSPHRASE)
    bucket, dest = s3.bucket(lock=True), tmp_path / "dest"
    monkeypatch.delenv("VMACCEL_PASSPHRASE", raising=False)  # moving needs no passphrase
    done = _migrate(cli, hist, dest, s3, pg.database(), "--object-lock", "governance",
                    "--lock-days", "1", bucket=bucket)  # fmt: skip
    assert done.rc == 0, done.err
    assert done.json["encrypted"] is True
    monkeypatch.setenv("VMACCEL_PASSPHRASE", PASSPHRASE)
    cli.ok("verify", "--full", "--repo", dest)
    copy = History(dest, PASSPHRASE, hist.expected)
    for (backup_id, disk), data in hist.expected.items():
        assert copy.read(backup_id, disk) == data
    client = s3.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert "vm/key" in keys and "vm/config" in keys
    heads = [client.head_object(Bucket=bucket, Key=k) for k in keys]
    assert all(h["ObjectLockMode"] == "GOVERNANCE" for h in heads)
    assert min(h["ObjectLockRetainUntilDate"].timestamp() for h in heads) >= time.time() + DAY - 60
    assert (dest / "locks.json").is_file()  # the known lock dates: no request per pack later


def test_an_interrupted_migration_leaves_no_repository_and_a_new_one_works(
    s3: SeaweedServer,
    pg: PostgresServer,  # noqa: F811
    cli: Cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hist = build_history(tmp_path / "src", small_config())
    before, bucket, url = _files(hist.path), s3.bucket(), pg.database()
    put = S3ObjectStore.put

    def failing_put(self: S3ObjectStore, key: str, data: bytes, *, replace: bool = False) -> None:
        if key.startswith("backups/"):
            raise ObjectStoreUnavailable("the endpoint went away")
        put(self, key, data, replace=replace)

    with monkeypatch.context() as patched:
        patched.setattr(S3ObjectStore, "put", failing_put)
        failed = _migrate(cli, hist, tmp_path / "d1", s3, url, bucket=bucket)
    assert failed.rc != 0 and failed.err.strip().count("\n") == 0, failed.err
    assert "went away" in failed.err
    assert _files(hist.path) == before
    with pytest.raises(RepositoryNotFound):
        Repository.open(tmp_path / "d1")
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert "vm/config" not in keys and any(k.startswith("vm/packs/") for k in keys)
    # the database and the prefix of the interrupted run are refused before DEST is begun
    used = _migrate(cli, hist, tmp_path / "d2", s3, url)
    assert used.rc == 3 and "already holds a vmaccel catalog" in used.err
    used = _migrate(cli, hist, tmp_path / "d2", s3, pg.database(), bucket=bucket)
    assert used.rc == 3 and "already holds objects" in used.err
    assert not (tmp_path / "d2").exists()
    again = _migrate(cli, hist, tmp_path / "d2", s3, pg.database())
    assert again.rc == 0, again.err
    cli.ok("verify", "--full", "--repo", tmp_path / "d2")


def test_a_pack_bigger_than_a_part_goes_up_in_parts(
    s3: SeaweedServer,
    pg: PostgresServer,  # noqa: F811
    cli: Cli,
    tmp_path: Path,
) -> None:
    src, dest, part = tmp_path / "src", tmp_path / "dest", 5 * 1024 * 1024
    Repository.init(src, small_config(pack_size=2 * part))
    data = random.Random(5).randbytes(part + part // 4)
    with Repository.open(src, write=True) as repo:
        backup_id, _ = _write_backup(repo, "big", {"disk0": data}, {})
        (pack,) = repo.index.packs()
    assert pack.size > part  # one pack, sent as a multipart upload of two parts
    bucket = s3.bucket()
    spec = StoreSpec(f"s3://{bucket}/vm", s3.endpoint, part_size=part)
    report = migrate(src, MigrationTarget(dest, spec, pg.database()))
    assert report.bytes > pack.size and dict(report.rows)["pack"] == 1
    head = s3.client().head_object(Bucket=bucket, Key=f"vm/packs/{pack.name[:2]}/{pack.name}")
    assert head["ContentLength"] == pack.size and head["ETag"].endswith('-2"')  # two parts
    cli.ok("verify", "--full", "--repo", dest)
    assert History(dest, None, {}).read(backup_id, "disk0") == data


def test_usage_errors_are_one_line(cli: Cli, history: History, tmp_path: Path) -> None:
    base = ("--repo", history.path, "--endpoint", "http://127.0.0.1:1")
    store = ("--store", "s3://bucket/vm")
    catalog = ("--catalog", "postgresql://u@127.0.0.1:1/db")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "something").write_text("x")
    cases = [
        ((tmp_path / "d", *base, *store), 2, "--catalog"),
        ((tmp_path / "d", *base, *catalog), 2, "--store"),
        ((tmp_path / "d", *base, *store, "--catalog", "postgresql://u:pw@h/db"), 2, "password"),
        ((taken, *base, *store, *catalog), 3, "not empty"),
        ((history.path, *base, *store, *catalog), 3, "already holds"),
    ]
    for args, rc, words in cases:
        _refused(cli, args, rc, words)
    elsewhere = ("--repo", taken, *base[2:], *store, *catalog)
    _refused(cli, (tmp_path / "d", *elsewhere), 3, "no vmaccel repository")
    assert [p.name for p in taken.iterdir()] == ["something"]  # no lock file left there
    with FileLock(history.path / "writers.lock", exclusive=False):  # a backup runs
        _refused(cli, (tmp_path / "d", *base, *store, *catalog), 4, "locked by another backup")
    with DaemonLock(history.path, "host:1"):  # vmaccel serve runs
        _refused(cli, (tmp_path / "d", *base, *store, *catalog), 4, "daemon (host:1)")
    assert not (tmp_path / "d").exists()


def _refused(cli: Cli, args: tuple[str | Path, ...], rc: int, words: str) -> None:
    got = cli("repo", "migrate", *args)
    assert (got.rc, got.out) == (rc, ""), (args, got)
    assert got.err.strip().count("\n") == 0 and words in got.err, (args, got.err)
    assert "Traceback" not in got.err

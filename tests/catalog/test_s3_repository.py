"""A whole repository with its objects in S3 (SeaweedFS), through the command line: backup
and restore, rebuild-index from the bucket alone, prune and gc beside Object Lock, and the
one-line errors of wrong credentials and an unreachable endpoint."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.catalog.conftest import small_config
from tests.catalog.s3server import SeaweedServer
from tests.catalog.standalone import Cli, random_image, rewrite_blocks
from vmaccel.catalog.repository import Repository
from vmaccel.catalog.s3lock import DAY
from vmaccel.catalog.storeconfig import StoreSpec, load_spec

MIB = 1024 * 1024


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


def _init(cli: Cli, repo: Path, server: SeaweedServer, *extra: str, lock: bool = False) -> str:
    bucket = server.bucket(lock=lock)
    cli.ok("repo", "init", "--repo", repo, "--store", f"s3://{bucket}/vm",
           "--endpoint", server.endpoint, *extra)  # fmt: skip
    return bucket


def _keys(server: SeaweedServer, bucket: str) -> list[str]:
    listed = server.client().list_objects_v2(Bucket=bucket)
    return [o["Key"] for o in listed.get("Contents", [])]


def _uuid(cli: Cli, repo: Path, backup_id: int) -> str:
    listed = cli.ok("backups", "list", "--repo", repo, "--json").json
    return str(next(b["uuid"] for b in listed if b["id"] == backup_id))


def _drop_index(repo: Path) -> None:
    for f in repo.glob("index.db*"):
        f.unlink()


def test_backup_restore_and_rebuild_index_from_the_bucket(
    s3: SeaweedServer, cli: Cli, tmp_path: Path
) -> None:
    repo, image = tmp_path / "repo", tmp_path / "disk.img"
    bucket = _init(cli, repo, s3, "--object-lock", "governance", "--lock-days", "1", lock=True)
    spec = load_spec(repo)
    assert spec is not None and spec.lock_seconds == DAY and spec.lock_mode == "governance"
    first = random_image(image, 3 * MIB, seed=1)
    b1 = cli.backup(repo, image, "vm1")
    second = rewrite_blocks(image, first, keep_every=3, seed=2)
    b2 = cli.backup(repo, image, "vm1")
    assert cli.restored(repo, b1, tmp_path / "r1") == first
    assert cli.restored(repo, b2, tmp_path / "r2") == second
    keys = _keys(s3, bucket)
    assert "vm/config" in keys and any(k.startswith("vm/packs/") for k in keys)
    assert len([k for k in keys if k.startswith("vm/backups/")]) == 2
    assert not (repo / "packs").exists()  # the directory keeps only what is local
    # every object is locked for at least the lock period after the last commit
    client = s3.client()
    heads = [client.head_object(Bucket=bucket, Key=k) for k in keys]
    assert all(h["ObjectLockMode"] == "GOVERNANCE" for h in heads)
    assert min(h["ObjectLockRetainUntilDate"].timestamp() for h in heads) >= time.time() + DAY - 60
    _drop_index(repo)
    report = cli.ok("repo", "rebuild-index", "--repo", repo, "--json").json
    assert report["complete"] is True
    assert cli.restored(repo, b2, tmp_path / "r3") == second
    cli.ok("verify", "--repo", repo)


def test_prune_and_gc_record_locked_deletes_instead_of_failing(
    s3: SeaweedServer, cli: Cli, tmp_path: Path
) -> None:
    repo, image = tmp_path / "repo", tmp_path / "disk.img"
    _init(cli, repo, s3, "--object-lock", "compliance", "--lock-days", "1", lock=True)
    data = random_image(image, 2 * MIB, seed=3)
    cli.backup(repo, image, "vm1")
    rewrite_blocks(image, data, keep_every=2, seed=4)
    cli.backup(repo, image, "vm1")
    cli.ok("prune", "--repo", repo, "--keep-last", "1")
    done = cli.ok("gc", "--repo", repo, "--grace", "0", "--json").json
    assert done["locked_waiting"] >= 1 and done["locked_deleted"] == 0
    assert len(cli.ok("backups", "list", "--repo", repo, "--json").json) == 1
    _drop_index(repo)  # the pruned backup's manifest is still locked, yet stays pruned
    cli.ok("repo", "rebuild-index", "--repo", repo)
    assert len(cli.ok("backups", "list", "--repo", repo, "--json").json) == 1
    cli.ok("verify", "--repo", repo)


def test_wrong_credentials_and_an_unreachable_endpoint_give_one_line(
    s3: SeaweedServer, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    _init(cli, repo, s3)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    denied = cli("backups", "list", "--repo", repo)
    assert denied.rc == 3
    assert len(denied.err.strip().splitlines()) == 1
    assert "SignatureDoesNotMatch" in denied.err and "credentials" in denied.err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    down = cli("repo", "init", "--repo", tmp_path / "other", "--store", "s3://bucket/x",
               "--endpoint", f"http://127.0.0.1:{port}")  # fmt: skip
    assert down.rc == 3
    assert len(down.err.strip().splitlines()) == 1
    assert "cannot reach the object store" in down.err
    assert not (tmp_path / "other").exists()  # nothing half-made


def test_gc_deletes_what_prune_freed_once_the_lock_has_expired(
    s3: SeaweedServer, cli: Cli, tmp_path: Path
) -> None:
    repo, image = tmp_path / "repo", tmp_path / "disk.img"
    bucket = s3.bucket(lock=True)
    spec = StoreSpec(f"s3://{bucket}/vm", s3.endpoint, lock_mode="governance", lock_seconds=4)
    Repository.init(repo, small_config(), store_spec=spec)  # a 4 s lock (the CLI takes days)
    data = random_image(image, 1 * MIB, seed=5)
    first = cli.backup(repo, image, "vm1")
    gone = _uuid(cli, repo, first)
    second_data = rewrite_blocks(image, data, keep_every=4, seed=6)
    second = cli.backup(repo, image, "vm1")
    cli.ok("prune", "--repo", repo, "--keep-last", "1")
    waiting = cli.ok("gc", "--repo", repo, "--grace", "0", "--json").json
    assert waiting["locked_waiting"] >= 2  # the first backup's manifest and its dead packs
    before = set(_keys(s3, bucket))
    time.sleep(5)
    done = cli.ok("gc", "--repo", repo, "--grace", "0", "--json").json
    assert done["locked_deleted"] == waiting["locked_waiting"] and done["locked_waiting"] == 0
    after = set(_keys(s3, bucket))
    assert f"vm/backups/{gone}" in before and f"vm/backups/{gone}" not in after
    assert not any(k.startswith("vm/.pending/") for k in after) and len(after) < len(before)
    assert cli.restored(repo, second, tmp_path / "r") == second_data
    cli.ok("verify", "--repo", repo)

"""repo rebuild-index on a PostgreSQL catalog: with the objects in the directory or in an S3
bucket, a catalog whose rows were lost is rebuilt from the packs and manifests alone (ids
kept, bytes restored, verify passes); the old tables are kept in a schema of their own and the
job queue's tables are left alone; a rebuild refuses while another session holds a lock."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.catalog.pgserver import PostgresServer, pg, postgres  # noqa: F401 - fixtures
from tests.catalog.standalone import Cli, random_image, rewrite_blocks
from vmaccel.catalog.catalogdb import catalog_url
from vmaccel.catalog.index.pgconnection import NAMESPACE, lock_key

MIB = 1024 * 1024


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


@pytest.mark.parametrize("where", ["directory", "s3"])
def test_a_lost_catalog_is_rebuilt_beside_the_old_one(
    pg: PostgresServer,  # noqa: F811
    cli: Cli,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    where: str,
) -> None:
    repo, image = tmp_path / "repo", tmp_path / "disk.img"
    store: tuple[str, ...] = ()
    if where == "s3":
        s3 = request.getfixturevalue("s3")
        store = ("--store", f"s3://{s3.bucket()}/rb", "--endpoint", s3.endpoint)
    cli.ok("repo", "init", "--repo", repo, "--catalog", pg.database(), *store)
    first = random_image(image, 3 * MIB, seed=1)
    b1 = cli.backup(repo, image, "vm1")
    second = rewrite_blocks(image, first, keep_every=3, seed=2)
    b2 = cli.backup(repo, image, "vm1")
    url = catalog_url(repo)
    assert url is not None
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE procrastinate_jobs (id BIGINT)")  # the queue's, untouched
        conn.execute("INSERT INTO procrastinate_jobs VALUES (42)")
        conn.execute("TRUNCATE chunk, pack, image, backup CASCADE")  # the catalog lost its rows
    report = cli.ok("repo", "rebuild-index", "--repo", repo, "--json").json
    assert report["complete"] is True and report["backups"] == 2
    assert report["moved_aside"].startswith("schema vmaccel_broken_")
    assert cli.restored(repo, b1, tmp_path / "r1") == first
    assert cli.restored(repo, b2, tmp_path / "r2") == second
    cli.ok("verify", "--repo", repo, "--full")
    aside = report["moved_aside"].removeprefix("schema ")
    with psycopg.connect(url, autocommit=True) as conn:
        query = sql.SQL("SELECT count(*) FROM {}.backup").format(sql.Identifier(aside))
        assert conn.execute(query).fetchone() == (0,)
        assert conn.execute("SELECT id FROM procrastinate_jobs").fetchall() == [(42,)]
    third = rewrite_blocks(image, second, keep_every=2, seed=3)
    b3 = cli.backup(repo, image, "vm1")  # the rebuilt catalog takes new backups
    assert b3 > b2 and cli.restored(repo, b3, tmp_path / "r3") == third


def test_a_rebuild_refuses_while_a_backup_holds_its_vm_lock(
    pg: PostgresServer,  # noqa: F811
    cli: Cli,
    tmp_path: Path,
) -> None:
    repo, image = tmp_path / "repo", tmp_path / "disk.img"
    cli.ok("repo", "init", "--repo", repo, "--catalog", pg.database())
    random_image(image, MIB, seed=4)
    b1 = cli.backup(repo, image, "vm1")
    url = catalog_url(repo)
    assert url is not None
    with psycopg.connect(url, autocommit=True) as other:  # a backup on another machine
        other.execute("SELECT pg_advisory_lock(%s, %s)", (NAMESPACE, lock_key("vm:vm1")))
        refused = cli("repo", "rebuild-index", "--repo", repo)
    assert refused.rc == 4 and "in use on some machine" in refused.err
    listed = cli.ok("backups", "list", "--repo", repo, "--json").json
    assert [b["id"] for b in listed] == [b1]  # nothing was touched

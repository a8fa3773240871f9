"""Fixtures for the suites run against both backends: `backend` is parametrized over the
local repository (objects in the directory, SQLite catalog) and the scaled-out one (objects
in S3, SeaweedFS; catalog in PostgreSQL), and yields a factory of new, empty repositories.

Each repository of the scaled-out backend gets a fresh bucket (prefix ``vm``) and a fresh
database; "s3+pg+lock" also turns Object Lock on (governance, one day), so nothing it writes
can be deleted during the test and gc must record its deletes instead. The bed, the in-process
CLI and the per-test config directory come from tests/plugin/conftest.py; real FUSE mounts from
tests/fusemount/conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.catalog.pgserver import PostgresServer, pg, postgres
from tests.catalog.s3server import SeaweedServer, s3, seaweed
from tests.fusemount.conftest import mount_repo
from tests.plugin.conftest import (
    Cli,
    _fresh_vms,
    cli,
    config_dir,
    fresh_vm,
    plugin_bed,
    vcenter,
)

__all__ = [
    "_fresh_vms", "cli", "config_dir", "fresh_vm", "mount_repo", "pg", "plugin_bed",
    "postgres", "s3", "seaweed", "vcenter",
]  # fmt: skip

PREFIX = "vm"
BACKENDS = ["local", "s3+pg", "s3+pg+lock"]


@dataclass(frozen=True)
class RepoUnderTest:
    """One repository of a backend: ``path`` is what ``--repo`` takes; ``bucket`` is None
    for the local backend; ``locked`` when its objects are under Object Lock."""

    path: Path
    backend: str
    bucket: str | None = None
    server: SeaweedServer | None = None
    catalog: str | None = None
    locked: bool = False

    def objects(self, folder: str) -> frozenset[str]:
        """The names of the objects the store holds now under ``folder`` ("packs" or
        "backups"): files of the directory, or keys of the bucket."""
        if self.server is None or self.bucket is None:
            return frozenset(p.name for p in (self.path / folder).rglob("*") if p.is_file())
        pages = self.server.client().get_paginator("list_objects_v2")
        keys = [
            obj["Key"]
            for page in pages.paginate(Bucket=self.bucket, Prefix=f"{PREFIX}/{folder}/")
            for obj in page.get("Contents", [])
        ]
        return frozenset(key.rsplit("/", 1)[-1] for key in keys)


NewRepo = Callable[[str], RepoUnderTest]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path, cli: Cli) -> NewRepo:
    """A factory: ``backend("repo")`` initialises a new repository under tmp_path with
    ``vmaccel repo init`` on this test's backend (its own bucket and database)."""
    kind: str = request.param
    servers: tuple[PostgresServer, SeaweedServer] | None = None
    if kind != "local":  # started only when a scaled-out backend is asked for
        servers = (request.getfixturevalue("pg"), request.getfixturevalue("s3"))

    def make(name: str) -> RepoUnderTest:
        path = tmp_path / name
        if servers is None:
            cli_ok(cli, "repo", "init", "--repo", path)
            return RepoUnderTest(path, kind)
        postgres_server, s3_server = servers
        locked = kind.endswith("+lock")
        bucket, catalog = s3_server.bucket(lock=locked), postgres_server.database()
        lock = ("--object-lock", "governance", "--lock-days", "1") if locked else ()
        cli_ok(cli, "repo", "init", "--repo", path, "--store", f"s3://{bucket}/{PREFIX}",
               "--endpoint", s3_server.endpoint, "--catalog", catalog, *lock)  # fmt: skip
        return RepoUnderTest(path, kind, bucket, s3_server, catalog, locked)

    return make


def cli_ok(cli: Cli, *args: str | Path) -> str:
    """Run the CLI; fail the test with what it printed unless it exits 0. Returns stdout."""
    result = cli(*args)
    assert result.rc == 0, f"vmaccel {' '.join(map(str, args))}: {result.err}{result.out}"
    return result.out

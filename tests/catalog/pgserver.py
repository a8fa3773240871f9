"""A real PostgreSQL 15 server for the catalog tests: Debian's binaries, run as the ``postgres``
user (``pg_ctl`` refuses root) through ``runuser``, in a temporary directory, on a free
loopback port, ``fsync=off``; started once per test session (about half a second) and stopped
with ``pg_ctl stop -m immediate`` at the end.

Connections over TCP need a password (``scram-sha-256``), which the tests give through
``PGPASSWORD`` the way an operator would; nothing stores it. Use the ``pg`` fixture: it starts
the server (once), puts the password into ``PGPASSWORD`` for the test, and makes databases
(``pg.database()``: a new empty one, its URL without password). Import the fixtures into a
test module with ``from tests.catalog.pgserver import pg, postgres  # noqa: F401``.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "postgres"
PASSWORD = "vmaccel-test-pw"  # a throwaway password of a loopback test server


def available() -> bool:
    """Whether PostgreSQL 15 and its ``postgres`` user are on this machine."""
    try:
        import pwd

        pwd.getpwnam(USER)
    except KeyError:
        return False
    return (BIN / "pg_ctl").is_file() and shutil.which("runuser") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(*args: str) -> None:
    subprocess.run(
        ["runuser", "-u", USER, "--", *args], check=True, capture_output=True, timeout=120
    )


@dataclass
class PostgresServer:
    """One running cluster: ``port`` on 127.0.0.1, data and socket under ``root``."""

    root: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        """A catalog URL of ``database`` (no password: that comes from ``PGPASSWORD``)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new empty database; returns its URL."""
        name = f"t{secrets.token_hex(6)}"
        with psycopg.connect(self.url(), password=PASSWORD, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        _as_postgres(str(BIN / "pg_ctl"), "-D", str(self.root / "data"), "stop", "-m", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def start() -> PostgresServer:
    """initdb + pg_ctl start in a new directory owned by ``postgres``; waits until it serves."""
    root = Path(tempfile.mkdtemp(prefix="vmaccel-pg-"))
    shutil.chown(root, USER, USER)
    (root / "pw").write_text(PASSWORD)
    shutil.chown(root / "pw", USER, USER)
    data, port = root / "data", _free_port()
    _as_postgres(
        str(BIN / "initdb"), "-D", str(data), "-U", USER, "--pwfile", str(root / "pw"),
        "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8",
    )  # fmt: skip
    opts = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    _as_postgres(
        str(BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", opts, "-w", "start"
    )
    return PostgresServer(root, port)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    if not available():
        pytest.skip("PostgreSQL 15 (apt: postgresql-15) is not installed")
    server = start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg(postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> PostgresServer:
    """The session's PostgreSQL, with its password in ``PGPASSWORD`` for this test."""
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    for name in ("PGSERVICE", "PGSERVICEFILE", "PGPASSFILE", "PGHOST", "PGPORT", "PGUSER"):
        monkeypatch.delenv(name, raising=False)
    return postgres


__all__ = ["PostgresServer", "available", "pg", "postgres", "start"]

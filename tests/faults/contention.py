"""Real `vmaccel` processes racing on one repository, and the checks that follow each race.

Every command runs as its own process of the installed entry point (what two users, or a user
and a timer, would start). `Racer` starts one in the background; `wait_locked` waits until a
process holds an ``flock`` on a repository file, read from ``/proc/locks`` so that the
test's own watching never takes a lock the racers compete for. `Ledger` remembers which
source image each committed backup was taken from and proves, after a race, that
``verify --full`` is clean and every backup it names restores byte-identical.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

VMACCEL = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "vmaccel"
MiB = 1024 * 1024
LOCKED_EXIT = 4  # catalog.errors.RepositoryLocked


def vmaccel(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run one command to its end; stdout and stderr captured as text."""
    return subprocess.run(
        [str(VMACCEL), *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


@dataclass
class Racer:
    """One command running in the background."""

    args: tuple[str, ...]
    proc: subprocess.Popen[str] = field(init=False)

    def __post_init__(self) -> None:
        self.proc = subprocess.Popen(
            [str(VMACCEL), *self.args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def finish(self, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        out, err = self.proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(self.args, self.proc.returncode, out, err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def start(*args: str | Path) -> Racer:
    return Racer(tuple(map(str, args)))


def lock_holders(path: Path) -> set[int]:
    """Pids holding an ``flock`` on ``path`` (shared or exclusive), from ``/proc/locks``
    (none while ``path`` does not exist yet: lock files are made by their first holder)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return set()
    ino, dev = st.st_ino, st.st_dev
    want = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"
    holders = set()
    with open("/proc/locks") as f:
        for line in f:
            parts = line.split()
            if "->" in parts:  # a waiter, not a holder
                continue
            if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == want:
                holders.add(int(parts[4]))
    return holders


def wait_locked(path: Path, racer: Racer, timeout: float = 60) -> bool:
    """Wait until ``racer``'s process holds a lock on ``path``; False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if racer.proc.pid in lock_holders(path):
            return True
        if racer.proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError(f"{racer.args[0]} did not lock {path} within {timeout} s")


def random_image(path: Path, size: int, seed: int) -> Path:
    """``size`` bytes (a multiple of 1 MiB) of incompressible data, reproducible from seed."""
    block = hashlib.blake2b(seed.to_bytes(8, "little")).digest()
    with path.open("wb") as f:
        for i in range(size // MiB):
            piece = hashlib.shake_256(block + i.to_bytes(8, "little")).digest(MiB)
            f.write(piece)
    return path


def one_error_line(err: str) -> str:
    """The message of a command that failed with exactly one ``vmaccel: error:`` line."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("vmaccel: error: "), err
    return lines[0].removeprefix("vmaccel: error: ")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Ledger:
    """The committed backups of one repository and the digest of the disk each was taken
    from; `check` is the after-race proof."""

    repo: Path
    scratch: Path
    expected: dict[int, str] = field(default_factory=dict)  # backup id -> source sha256
    restored: set[int] = field(default_factory=set)

    def backup(self, image: Path, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
        """A standalone backup that must succeed; its id is remembered."""
        done = vmaccel("backup", "--repo", self.repo, "--source", f"file:{image}",
                       "--name", name, "--json", *extra)  # fmt: skip
        assert done.returncode == 0, done.stderr + done.stdout
        self.remember(done, image)
        return done

    def remember(self, done: subprocess.CompletedProcess[str], image: Path) -> int:
        """Note the backup a successful ``backup --json`` run made of ``image``."""
        (vm,) = json.loads(done.stdout)["vms"]
        self.expected[int(vm["backup_id"])] = sha256(image)
        return int(vm["backup_id"])

    def listed(self) -> dict[int, dict[str, Any]]:
        done = vmaccel("backups", "list", "--repo", self.repo, "--json")
        assert done.returncode == 0, done.stderr
        return {int(b["id"]): b for b in json.loads(done.stdout)}

    def forget(self, ids: set[int]) -> None:
        for i in ids:
            self.expected.pop(i, None)

    def verify_clean(self) -> bool:
        done = vmaccel("verify", "--full", "--repo", self.repo, "--json")
        return done.returncode == 0 and bool(json.loads(done.stdout)["ok"])

    def restores(self, every: bool = False) -> tuple[int, int]:
        """(backups lost, backups restoring wrong bytes) among those remembered: those not
        restored by an earlier call, or ``every`` one. (Between the calls, ``verify --full``
        re-reads every chunk of every backup.)"""
        listed = self.listed()
        lost = wrong = 0
        out = self.scratch / "restored.raw"
        for bid, digest in sorted(self.expected.items()):
            if bid in self.restored and not every:
                if bid not in listed:
                    lost += 1
                continue
            self.restored.add(bid)
            if bid not in listed:
                lost += 1
                continue
            done = vmaccel("restore", "disk", str(bid), "disk0", "--repo", self.repo,
                           "--to", out, "--force", "--json")  # fmt: skip
            if done.returncode != 0:
                lost += 1
            elif sha256(out) != digest:
                wrong += 1
            out.unlink(missing_ok=True)
        return lost, wrong


@contextlib.contextmanager
def slow_source(image: Path, delay: str = "600ms") -> Iterator[str]:
    """``image`` served over NBD by nbdkit, each read delayed by ``delay`` (the delay filter):
    a backup of it holds its locks for seconds, long enough for a rival to meet it."""
    if not shutil.which("nbdkit"):
        pytest.skip("needs nbdkit")
    where = Path(tempfile.mkdtemp(prefix="vmaccel-nbd-"))  # short: a socket path has 108 bytes
    sock = where / "sock"
    proc = subprocess.Popen(
        ["nbdkit", "-f", "-U", str(sock), "--filter=delay", "file", str(image),
         f"rdelay={delay}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "nbdkit did not start"
            time.sleep(0.02)
        yield f"nbd:nbd+unix:///?socket={sock}"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(where, ignore_errors=True)

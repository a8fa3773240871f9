"""The CLI run in-process on standalone (``--source file:``) backups of random-data images:
what catalog tests use when the command line itself is under test."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vmaccel.cli.app import main

BLOCK = 64 * 1024  # the CLI's default block size


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    """``cli("backups", "list", "--repo", path)`` -> exit code and what was printed."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def __call__(self, *args: str | Path) -> Result:
        self._capsys.readouterr()
        rc = main([str(a) for a in args])
        out, err = self._capsys.readouterr()
        return Result(rc, out, err)

    def ok(self, *args: str | Path) -> Result:
        result = self(*args)
        assert result.rc == 0, result.err + result.out
        return result

    def backup(self, repo: Path, image: Path, name: str) -> int:
        """One standalone backup of ``image``; returns its backup id."""
        done = self.ok(
            "backup", "--repo", repo, "--source", f"file:{image}", "--name", name,
            "--no-file-index", "--json",
        )  # fmt: skip
        (vm,) = done.json["vms"]
        assert vm["ok"], vm
        return int(vm["backup_id"])

    def restored(self, repo: Path, backup_id: int, to: Path) -> bytes:
        """The bytes of disk0 of one backup, as ``restore disk`` writes them."""
        to.unlink(missing_ok=True)
        self.ok("restore", "disk", str(backup_id), "disk0", "--repo", repo, "--to", to)
        return to.read_bytes()


def random_image(path: Path, size: int, seed: int) -> bytes:
    """Write ``size`` bytes of random data to ``path`` (incompressible: stored as is)."""
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


def rewrite_blocks(path: Path, data: bytes, keep_every: int, seed: int) -> bytes:
    """Replace every block but each ``keep_every``-th with new random bytes; returns the
    new content (also written to ``path``)."""
    rng = random.Random(seed)
    out = bytearray(data)
    for i in range(len(data) // BLOCK):
        if i % keep_every:
            out[i * BLOCK : (i + 1) * BLOCK] = rng.randbytes(BLOCK)
    path.write_bytes(out)
    return bytes(out)

"""Small standalone sources for CLI tests: bare ext4 images made with mkfs, backed up through
``vmaccel backup --source file:``."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tests.guestfs.imaging import MiB, mkfs_ext4
from tests.plugin.conftest import Cli


def ext4_image(work: Path, name: str, seed: int, text: bool = False) -> Path:
    """An 8 MiB ext4 image holding ``a.txt`` and a 300 kB ``data.bin`` (random, or
    compressible text); a different seed gives a different ``data.bin``."""
    src = work / f"{name}.src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "a.txt").write_text(f"hello {seed}\n")
    rng = random.Random(seed)
    data = (f"line {seed} " * 30_000).encode() if text else rng.randbytes(300_000)
    (src / "data.bin").write_bytes(data)
    img = work / f"{name}.img"
    mkfs_ext4(img, 8 * MiB, src)
    return img


def backup(cli: Cli, repo: Path, image: Path, name: str, *extra: str) -> dict[str, Any]:
    """Back up ``image`` as VM ``name``; returns the ``backup --json`` document."""
    r = cli("backup", "--repo", repo, "--source", f"file:{image}", "--name", name, "--json", *extra)
    assert r.rc == 0, r.err + r.out
    doc: dict[str, Any] = r.json
    return doc

"""In a ``repokey`` repository nothing but the local index names a VM, a source or a guest file.

Backups of two real guest disks (ext4 and NTFS, made with mkfs) whose VM names, source paths
and guest file names are unique marker strings; then every file of the repository except
``index.db`` (and its ``-wal``/``-shm``) is searched for each marker, as UTF-8 and as UTF-16LE
(NTFS stores names that way): none may appear. Compression is off, so only encryption can hide
them. The same markers must be in the index and found by ``files find``, and the same search
finds them in an unencrypted repository, so it cannot pass for want of anything to find.
"""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path

import pytest

from tests.guestfs.imaging import have, mkfs_ext4
from tests.guestfs.ntfsimage import mkfs_populated
from vmaccel.cli.app import main

PASSPHRASE = "privacy-test passphrase 7c1e"
MiB = 1 << 20
LOCAL_ONLY = {"index.db", "index.db-wal", "index.db-shm"}
# Marker strings: each appears nowhere in the product, the tools' output or random data.
VM_EXT4 = "vmname-Q7XKJ3WB"
VM_NTFS = "vmname-N4TFS8ZR"
SOURCE_DIR = "srcpath-ZP4MH2CE"
EXT4_FILES = {"guestfile-R2WDV6AL.txt": b"ext4 one\n", "dirname-K9SUT5NQ/inner-F3YJ.bin": b"x"}
NTFS_FILES = {"ntfsname-H8LMC4PG.doc": b"ntfs one\n", "ntfsdir-W6EBA1XD/deep-U5RT.txt": b"y"}


def markers() -> list[str]:
    names = [VM_EXT4, VM_NTFS, SOURCE_DIR]
    for rel in [*EXT4_FILES, *NTFS_FILES]:
        names += [part.split(".")[0] for part in rel.split("/")]
    return names


def padded(files: dict[str, bytes], seed: int) -> dict[str, bytes]:
    """``files`` plus random filler, so the disks have data blocks beyond the metadata."""
    rnd = random.Random(seed)
    return {**files, "filler.bin": rnd.randbytes(300_000)}


def backup(repo: Path, image: Path, vm: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["backup", "--repo", str(repo), "--source", f"file:{image}", "--name", vm, "--json"]
    rc = main(args)
    out, err = capsys.readouterr()
    assert rc == 0, err + out
    (report,) = json.loads(out)["vms"]
    assert report["ok"], report


def leaks(repo: Path) -> dict[str, list[str]]:
    """Repository file (relative) -> the markers found in it, for every file but the index."""
    found: dict[str, list[str]] = {}
    for dirpath, _dirs, files in os.walk(repo):
        for name in files:
            path = Path(dirpath) / name
            if path.parent == repo and name in LOCAL_ONLY:
                continue
            data = path.read_bytes()
            hits = [
                m
                for m in markers()
                if m.encode() in data
                or m.encode("utf-16-le") in data
                or m.lower().encode() in data.lower()
            ]
            if hits:
                found[str(path.relative_to(repo))] = hits
    return found


def make_sources(tmp_path: Path) -> Path:
    """The directory (named by a marker) holding an ext4 and an NTFS disk image."""
    if not (have("mkfs.ext4") and have("mkntfs") and have("ntfs-3g")):
        pytest.skip("mkfs.ext4, mkntfs or ntfs-3g missing")
    sources = tmp_path / SOURCE_DIR
    tree = tmp_path / "tree"
    for rel, data in padded(EXT4_FILES, 1).items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    sources.mkdir()
    mkfs_ext4(sources / "ext4.img", 8 * MiB, tree)
    mkfs_populated(sources / "ntfs.img", 8 * MiB, padded(NTFS_FILES, 2), tmp_path / "mnt")
    return sources


@pytest.fixture(autouse=True)
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMACCEL_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("VMACCEL_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("VMACCEL_REPO", raising=False)


def init(repo: Path, capsys: pytest.CaptureFixture[str], *options: str) -> None:
    assert main(["repo", "init", "--repo", str(repo), *options]) == 0
    capsys.readouterr()


def test_the_search_finds_markers_in_an_unencrypted_repository(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The control: without encryption (or compression) the manifest names the VM and the
    source, and the packs hold the guest's directory blocks."""
    sources = make_sources(tmp_path)
    repo = tmp_path / "repo"
    init(repo, capsys, "--encryption", "none", "--compression", "none")
    backup(repo, sources / "ext4.img", VM_EXT4, capsys)
    found = leaks(repo)
    manifests = {name: hits for name, hits in found.items() if name.startswith("backups/")}
    assert len(manifests) == 1
    assert {VM_EXT4, SOURCE_DIR} <= set(*manifests.values())
    in_packs = {m for name, hits in found.items() if name.startswith("packs/") for m in hits}
    assert "guestfile-R2WDV6AL" in in_packs


def test_repokey_repository_files_name_no_vm_source_or_guest_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sources = make_sources(tmp_path)
    repo = tmp_path / "repo"
    init(repo, capsys, "--encryption", "repokey", "--compression", "none")
    backup(repo, sources / "ext4.img", VM_EXT4, capsys)
    backup(repo, sources / "ntfs.img", VM_NTFS, capsys)
    backup(repo, sources / "ext4.img", VM_EXT4, capsys)  # an incremental too

    # The markers were recorded: in the local index, and found by the file catalog.
    index = b"".join((repo / n).read_bytes() for n in sorted(LOCAL_ONLY) if (repo / n).exists())
    for m in (VM_EXT4, VM_NTFS, SOURCE_DIR, "guestfile-R2WDV6AL", "ntfsname-H8LMC4PG"):
        assert m.encode() in index, m
    for pattern in ("guestfile-R2WDV6AL.txt", "ntfsname-H8LMC4PG.doc"):
        assert main(["files", "find", "--repo", str(repo), pattern, "--json"]) == 0
        assert json.loads(capsys.readouterr().out), pattern

    # ... and nothing else in the repository names them.
    assert leaks(repo) == {}
    # The index is private to the backup server's user.
    assert stat.S_IMODE(repo.stat().st_mode) == 0o700
    for name in LOCAL_ONLY:
        if (repo / name).exists():
            assert stat.S_IMODE((repo / name).stat().st_mode) == 0o600, name

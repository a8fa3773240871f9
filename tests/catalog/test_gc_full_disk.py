"""gc on a full disk, on a real (loop-mounted ext4) filesystem: dead packs first, repacks into
the space that frees, the exact space it needs when it cannot, and ENOSPC mid-repack."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.catalog.standalone import Cli, random_image, rewrite_blocks
from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.catalog.repository import RESERVE_BYTES

MiB = 1 << 20
FS_BYTES = 96 * MiB
PACK = 1 * MiB  # small packs: many of them in a small filesystem


@pytest.fixture(autouse=True)
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMACCEL_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("VMACCEL_REPO", raising=False)
    monkeypatch.delenv("VMACCEL_PASSPHRASE", raising=False)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A freshly made 96 MiB ext4 (no root reserve), loop-mounted; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to loop-mount a filesystem")
    image, mnt = tmp_path / "fs.img", tmp_path / "fs"
    mnt.mkdir()
    with image.open("wb") as f:
        f.truncate(FS_BYTES)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-b", "4096", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave: int) -> Path:
    """Take all but about ``leave`` bytes of the filesystem with ``path/filler``: fallocate
    most of it, then append small writes until the kernel says ENOSPC or ``leave`` is hit."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        bulk = free_bytes(path) - leave - 4 * MiB
        if bulk > 0:
            os.posix_fallocate(fd, 0, bulk)
            os.lseek(fd, 0, os.SEEK_END)
        for piece in (64 * 1024, 4096):
            while free_bytes(path) - piece >= leave:
                try:
                    os.write(fd, bytes(piece))
                    os.fsync(fd)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


def shrink(filler: Path, by: int) -> None:
    os.truncate(filler, max(filler.stat().st_size - by, 0))
    fd = os.open(filler, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def pack_files(repo: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (repo / "packs").glob("[0-9a-f][0-9a-f]/*")}


class Scene:
    """A repository on ``fs`` holding VM "a": a 12 MiB full, then incrementals that rewrite
    3 blocks in 4 (``generations`` backups in all), pruned to the last one. Packs of the
    full are then 3/4 dead (repacked), those of the middle incrementals wholly dead."""

    def __init__(self, cli: Cli, fs: Path, tmp: Path, generations: int) -> None:
        self.cli, self.tmp = cli, tmp
        self.repo = fs / "repo"
        Repository.init(self.repo, RepositoryConfig(pack_size=PACK))
        image = tmp / "a.img"
        data = random_image(image, 12 * MiB, 1)
        for g in range(generations):
            if g:
                data = rewrite_blocks(image, data, 4, 100 + g)
            self.last = cli.backup(self.repo, image, "a")
        self.expected = data
        cli.ok("prune", "--repo", self.repo, "--keep-last", "1")

    def gc(self, *extra: str) -> tuple[int, str, str]:
        r = self.cli("gc", "--repo", self.repo, "--grace", "0", *extra)
        return r.rc, r.out, r.err

    def check(self) -> None:
        """verify --full is clean, no stray pack, and the kept backup restores exactly."""
        self.cli.ok("verify", "--full", "--repo", self.repo)
        assert not list((self.repo / "packs" / "tmp").glob("*"))
        assert self.cli.restored(self.repo, self.last, self.tmp / "out.img") == self.expected


@pytest.mark.parametrize("reserve", [True, False], ids=["reserve", "no-reserve"])
def test_gc_on_a_full_disk_deletes_dead_packs_then_repacks(
    cli: Cli, small_fs: Path, tmp_path: Path, reserve: bool
) -> None:
    """With the reserve, the disk is filled to the last block. Without it (used up), 256 KiB
    are left: less than the smallest repack needs (~600 KiB), so gc gets anywhere only by
    deleting the wholly dead packs first."""
    scene = Scene(cli, small_fs, tmp_path, generations=3)
    assert (scene.repo / "reserve").stat().st_size == RESERVE_BYTES
    if not reserve:
        (scene.repo / "reserve").unlink()
    filler = fill(small_fs, 0 if reserve else 256 * 1024)
    assert free_bytes(small_fs) <= (0 if reserve else 256 * 1024) + 64 * 1024
    before = pack_files(scene.repo)

    rc, out, err = scene.gc("--json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["packs_deleted"] >= 9 and report["packs_repacked"] == 12
    assert report["space_needed"] == 0 and report["packs_pending"] == []
    after = pack_files(scene.repo)
    assert report["bytes_freed"] == sum(before.values()) - sum(
        size for name, size in before.items() if name in after
    )
    assert report["bytes_written"] == sum(s for n, s in after.items() if n not in before)
    assert report["bytes_freed"] - report["bytes_written"] > 10 * MiB
    assert free_bytes(small_fs) > 8 * MiB  # room again, the reserve back in place
    assert (scene.repo / "reserve").exists()
    filler.unlink()
    scene.check()


def test_gc_says_how_much_space_it_needs_and_that_is_enough(
    cli: Cli, small_fs: Path, tmp_path: Path
) -> None:
    scene = Scene(cli, small_fs, tmp_path, generations=2)  # dead: only the full's map nodes
    (scene.repo / "reserve").unlink()  # as if a backup had used it up
    filler = fill(small_fs, 128 * 1024)
    before = pack_files(scene.repo)

    rc, out, err = scene.gc("--json")
    assert rc == 15, err
    first = json.loads(out)
    needed = first["space_needed"]
    assert 0 < needed < 2 * MiB and first["packs_not_repacked"] == 12
    after = pack_files(scene.repo)
    assert set(after) <= set(before)  # nothing written; only the wholly dead (map) packs went
    assert len(before) - len(after) == first["packs_deleted"]
    cli.ok("verify", "--repo", scene.repo)

    shrink(filler, needed)  # exactly what it asked for
    rc, out, err = scene.gc("--json")
    assert rc == 0, err + out
    report = json.loads(out)
    assert report["packs_repacked"] == 12 and report["space_needed"] == 0
    filler.unlink()
    scene.check()


def test_enospc_in_the_middle_of_a_repack_leaves_the_repository_consistent(
    cli: Cli, small_fs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene = Scene(cli, small_fs, tmp_path, generations=2)
    (scene.repo / "reserve").unlink()
    filler = fill(small_fs, 128 * 1024)
    before = pack_files(scene.repo)
    # The space check is told there is room: the repack meets the real ENOSPC.
    monkeypatch.setattr(Repository, "free_bytes", lambda self: 1 << 40)

    rc, out, err = scene.gc()
    assert rc == 15
    (line,) = err.strip().splitlines()
    assert "gc stopped repacking: no space left writing" in line
    assert str(scene.repo / "packs" / "tmp") in line and "that pack needs" in line
    assert "consistent" in line
    monkeypatch.undo()
    after = pack_files(scene.repo)
    assert set(after) <= set(before)  # no new pack; the old ones still hold every live chunk
    assert len(before) - len(after) <= 2  # the full's wholly dead map-node packs at most
    assert not list((scene.repo / "packs" / "tmp").glob("*"))  # the partial pack is gone
    cli.ok("verify", "--full", "--repo", scene.repo)

    filler.unlink()
    rc, out, err = scene.gc("--json")
    assert rc == 0, err
    assert json.loads(out)["packs_repacked"] == 12
    scene.check()


def test_without_the_reserve_a_disk_full_to_the_last_block_is_one_clear_line(
    cli: Cli, small_fs: Path, tmp_path: Path
) -> None:
    """SQLite cannot even open its index with no block left (its -shm file needs 32 KiB):
    gc then says so in one line, changes nothing, and runs once a little space is back."""
    scene = Scene(cli, small_fs, tmp_path, generations=3)
    (scene.repo / "reserve").unlink()
    filler = fill(small_fs, 0)
    before = pack_files(scene.repo)
    rc, out, err = scene.gc()
    assert rc == 15, err + out
    (line,) = err.strip().splitlines()
    assert f"no space left on the filesystem of the catalog index {scene.repo}" in line
    assert "rebuild-index" not in line  # a full disk is not a damaged index
    assert pack_files(scene.repo) == before
    shrink(filler, 512 * 1024)
    rc, out, err = scene.gc("--json")
    assert rc == 0, err
    assert json.loads(out)["packs_repacked"] == 12
    filler.unlink()
    scene.check()

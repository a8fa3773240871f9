"""OS errors no layer foresaw: one line naming the path and the cause, exit code 14 (15 when a
filesystem is full), the traceback only with ``--debug``; the repository stays consistent.

The disk-full cases use a real, small ext4 filesystem on a loop device (root only).
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.plugin.conftest import Cli
from vmaccel.vocabulary.errors import LocalIOError, NoSpaceLeft, RepositoryExists

VMACCEL = Path(sys.executable).with_name("vmaccel")  # the installed entry point
MiB = 1024 * 1024
SMALL_FS_BYTES = 48 * MiB


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A mounted ext4 of 48 MiB (no reserved blocks: root may not write past "full")."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        pytest.skip("needs root and mkfs.ext4 for a loop-mounted filesystem")
    image, mnt = tmp_path / "small.ext4", tmp_path / "small"
    with image.open("wb") as f:
        f.truncate(SMALL_FS_BYTES)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", image], check=True)
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-o", "loop", image, mnt], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"no loop mount here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", mnt], check=True)


def random_image(path: Path, size: int) -> Path:
    """Incompressible bytes, so the repository needs ``size`` bytes to hold them."""
    with path.open("wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    return path


def vmaccel(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The installed command in a process of its own: what a user sees, logging included."""
    return subprocess.run([VMACCEL, *map(str, args)], capture_output=True, text=True, timeout=300)


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vmaccel: error: "), err
    return lines[0].removeprefix("vmaccel: error: ")


def test_backup_larger_than_the_free_space(tmp_path: Path, small_fs: Path, cli: Cli) -> None:
    repo = small_fs / "repo"
    assert cli("repo", "init", "--repo", repo).rc == 0
    first = random_image(tmp_path / "first.raw", 4 * MiB)
    assert cli("backup", "--repo", repo, "--source", f"file:{first}", "--name", "a").rc == 0
    big = random_image(tmp_path / "big.raw", 2 * SMALL_FS_BYTES)

    r = vmaccel("backup", "--repo", repo, "--source", f"file:{big}", "--name", "X")

    assert r.returncode == NoSpaceLeft.exit_code == 15, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    message = one_error_line(r.stderr)
    assert message.startswith(f"no space left on device writing {repo}/packs/"), message
    # Consistent: nothing of the failed run is visible, no leftover pack, the first backup
    # still restores byte-identical.
    assert cli("verify", "--full", "--repo", repo).rc == 0
    assert cli("backups", "list", "--repo", repo, "--json").json[0]["vm"] == "a"
    assert len(cli("backups", "list", "--repo", repo, "--json").json) == 1
    assert not list((repo / "packs" / "tmp").iterdir())
    out = tmp_path / "first.restored"
    assert cli("restore", "disk", "a@latest", "disk0", "--repo", repo, "--to", out).rc == 0
    assert out.read_bytes() == first.read_bytes()


def test_restore_onto_a_full_filesystem(tmp_path: Path, small_fs: Path, cli: Cli) -> None:
    repo = tmp_path / "repo"
    assert cli("repo", "init", "--repo", repo).rc == 0
    big = random_image(tmp_path / "big.raw", 2 * SMALL_FS_BYTES)
    assert cli("backup", "--repo", repo, "--source", f"file:{big}", "--name", "X").rc == 0
    target = small_fs / "out.raw"

    r = vmaccel("restore", "disk", "X@latest", "disk0", "--repo", repo, "--to", target)

    assert r.returncode == 15, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    message = one_error_line(r.stderr)
    assert message.startswith(f"no space left on device writing {target}"), message
    assert sorted(p.name for p in small_fs.iterdir()) == ["lost+found"]  # no partial left
    assert cli("verify", "--repo", repo).rc == 0


def test_repo_init_on_a_regular_file(tmp_path: Path, cli: Cli) -> None:
    path = tmp_path / "afile"
    path.write_bytes(b"not a repository")

    r = cli("repo", "init", "--repo", path)

    assert r.rc == RepositoryExists.exit_code
    assert one_error_line(r.err) == f"{path} exists and is not a directory; choose another path"
    assert path.read_bytes() == b"not a repository"


def test_repo_init_below_a_regular_file(tmp_path: Path, cli: Cli) -> None:
    """Not foreseen by ``repo init``: the OSError itself becomes the one line."""
    (tmp_path / "afile").touch()

    r = cli("repo", "init", "--repo", tmp_path / "afile" / "repo")

    assert r.rc == LocalIOError.exit_code == 14
    assert one_error_line(r.err) == f"file exists: {tmp_path / 'afile'}"


def _one_backup(tmp_path: Path, cli: Cli) -> Path:
    repo = tmp_path / "repo"
    assert cli("repo", "init", "--repo", repo).rc == 0
    source = random_image(tmp_path / "disk.raw", 1 * MiB)
    assert cli("backup", "--repo", repo, "--source", f"file:{source}", "--name", "X").rc == 0
    return repo


def test_restore_into_a_missing_directory(tmp_path: Path, cli: Cli) -> None:
    repo = _one_backup(tmp_path, cli)
    target = tmp_path / "missing" / "dir" / "out.raw"

    r = cli("restore", "disk", "X@latest", "disk0", "--repo", repo, "--to", target)

    assert r.rc == 14
    assert "Traceback" not in r.out + r.err
    assert one_error_line(r.err).startswith(f"no such file or directory: {target}")
    assert not target.parent.exists()


def test_debug_shows_the_traceback_of_an_os_error(tmp_path: Path, cli: Cli) -> None:
    repo = _one_backup(tmp_path, cli)
    target = tmp_path / "missing" / "out.raw"

    r = cli("--debug", "restore", "disk", "X@latest", "disk0", "--repo", repo, "--to", target)

    assert r.rc == 14
    assert "Traceback (most recent call last):" in r.err
    assert "FileNotFoundError: [Errno 2] No such file or directory" in r.err
    assert r.err.splitlines()[-1].startswith(f"vmaccel: error: no such file or directory: {target}")


def test_debug_shows_the_traceback_of_a_vmaccel_error(tmp_path: Path, cli: Cli) -> None:
    repo = tmp_path / "repo"
    assert cli("repo", "init", "--repo", repo).rc == 0
    message = f"no complete backup '99' in {repo}"
    plain = cli("backups", "show", "99", "--repo", repo)
    assert (plain.rc, plain.err.strip()) == (7, f"vmaccel: error: {message}")

    r = cli("--debug", "backups", "show", "99", "--repo", repo)

    assert r.rc == 7
    assert "Traceback (most recent call last):" in r.err
    assert "vmaccel.vocabulary.errors.BackupNotFound" in r.err
    assert r.err.splitlines()[-1] == f"vmaccel: error: {message}"


@pytest.mark.parametrize(
    ("exc", "cls", "message"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/r/packs/tmp/ab"),
            NoSpaceLeft,
            "no space left on device writing /r/packs/tmp/ab; free space there and run it again",
        ),
        (
            OSError(errno.EDQUOT, "Disk quota exceeded"),
            NoSpaceLeft,
            "disk quota exceeded during `vmaccel backup`; free space there and run it again",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", "/r/index.db"),
            LocalIOError,
            "permission denied: /r/index.db",
        ),
        (
            OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, b"/b"),
            LocalIOError,
            "invalid cross-device link: /a -> /b",
        ),
        (OSError(errno.EIO, "Input/output error"), LocalIOError, "input/output error during "),
    ],
    ids=["enospc", "edquot-no-filename", "eacces", "two-paths", "eio-no-filename"],
)
def test_os_error_messages(exc: OSError, cls: type[LocalIOError], message: str) -> None:
    err = LocalIOError.from_os_error(exc, "during `vmaccel backup`")
    assert type(err) is cls
    assert str(err).startswith(message)
    assert err.errno == exc.errno  # FUSE and callers keep the cause
    assert isinstance(err, OSError)


def _failing(exc: BaseException) -> Callable[..., object]:
    def fail(*args: object, **kwargs: object) -> object:
        raise exc

    return fail


def _sqlite_error(message: str, code: int) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(message)
    exc.sqlite_errorcode = code  # what SQLite sets on a real one
    return exc


@pytest.mark.parametrize(
    ("exc", "rc", "line"),
    [
        (
            OSError(errno.EIO, "Input/output error"),
            14,
            "input/output error during `vmaccel repo stats`",
        ),
        (
            _sqlite_error("database or disk is full", sqlite3.SQLITE_FULL),
            15,
            "no space left on device writing the catalog index during `vmaccel repo stats`; "
            "free space there and run it again",
        ),
        (
            _sqlite_error("disk I/O error", sqlite3.SQLITE_IOERR_SHMSIZE),
            14,
            "the catalog index cannot be read or written (disk I/O error) during "
            "`vmaccel repo stats`",
        ),
    ],
    ids=["eio", "sqlite-full", "sqlite-ioerr"],
)
def test_unforeseen_errors_without_a_path_name_the_command(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch, exc: Exception, rc: int, line: str
) -> None:
    repo = tmp_path / "repo"
    assert cli("repo", "init", "--repo", repo).rc == 0
    monkeypatch.setattr("vmaccel.service.repository.repository_stats", _failing(exc))

    r = cli("repo", "stats", "--repo", repo)

    assert (r.rc, one_error_line(r.err)) == (rc, line)

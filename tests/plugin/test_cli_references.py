"""Every command that takes a backup accepts every form of a backup reference.

Two backups of VM ``web`` whose disks differ (a different ``data.bin``), then each command is
run with each form naming the *first* one — its id, its uuid, ``web@-1``, its mount directory
name, an ISO time between the two — and the newest with ``web@latest``. The outcome proves
which backup the command used: ``backups show`` prints its id, ``restore disk`` writes that
disk's bytes, ``restore file`` that version of ``data.bin``, and ``mount --backup`` shows only
that backup's directory.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.fusemount.conftest import Mounted, mount_repo, needs_fuse
from tests.plugin.clirepo import ext4_image
from tests.plugin.conftest import Cli
from vmaccel.cli.app import main
from vmaccel.vocabulary.backupref import dir_time

__all__ = ["mount_repo"]  # fixture

FORMS = ("id", "uuid", "back", "dirname", "time", "latest")


@dataclass(frozen=True)
class Two:
    """The repository and what each of its two backups holds."""

    repo: Path
    ids: tuple[int, int]
    uuids: tuple[str, str]
    started: tuple[float, float]
    disks: tuple[bytes, bytes]
    data_bin: tuple[bytes, bytes] = (b"", b"")

    def ref(self, form: str) -> tuple[str, int]:
        """The reference text of `form` and the index (0, 1) of the backup it names."""
        first = {
            "id": str(self.ids[0]),
            "uuid": self.uuids[0].upper(),  # any case
            "back": "web@-1",
            "dirname": f"web@{dir_time(self.started[0])}",
            # not a directory name: an ISO time with an offset, in the first backup's second
            "time": f"web@{datetime.fromtimestamp(int(self.started[0]), UTC).isoformat()}",
        }
        return (first[form], 0) if form in first else ("web@latest", 1)


def _run(*args: str | Path) -> Any:
    """``vmaccel ARGS --json`` in-process for the module fixture; its JSON document."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main([*map(str, args), "--json"])
    assert rc == 0, (args, out.getvalue())
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Two:
    """Built once for the module: every test only reads it (restores write elsewhere)."""
    work = tmp_path_factory.mktemp("references")
    repo = work / "repo"
    assert main(["repo", "init", "--repo", str(repo)]) == 0
    images = [ext4_image(work, f"v{seed}", seed) for seed in (1, 2)]
    shown: list[Any] = []
    for image in images:
        if shown:
            time.sleep(1.1)  # distinct seconds: the time forms name one backup each
        run = _run("backup", "--repo", repo, "--source", f"file:{image}", "--name", "web")
        shown.append(_run("backups", "show", run["vms"][0]["backup_id"], "--repo", repo))
    return Two(
        repo,
        (shown[0]["id"], shown[1]["id"]),
        (shown[0]["uuid"], shown[1]["uuid"]),
        (shown[0]["started"], shown[1]["started"]),
        (images[0].read_bytes(), images[1].read_bytes()),
        ((work / "v1.src" / "data.bin").read_bytes(), (work / "v2.src" / "data.bin").read_bytes()),
    )


@pytest.mark.parametrize("form", FORMS)
def test_backups_show(cli: Cli, two: Two, form: str) -> None:
    ref, which = two.ref(form)
    shown = cli("backups", "show", ref, "--repo", two.repo, "--json")
    assert (shown.rc, shown.json["id"]) == (0, two.ids[which]), (ref, shown.err)


@pytest.mark.parametrize("form", FORMS)
def test_restore_disk(cli: Cli, two: Two, tmp_path: Path, form: str) -> None:
    ref, which = two.ref(form)
    target = tmp_path / "disk.img"
    done = cli("restore", "disk", ref, "disk0", "--to", target, "--repo", two.repo)
    assert done.rc == 0, (ref, done.err)
    assert target.read_bytes() == two.disks[which]


@pytest.mark.parametrize("form", FORMS)
def test_restore_file(cli: Cli, two: Two, tmp_path: Path, form: str) -> None:
    ref, which = two.ref(form)
    to = tmp_path / "out"
    done = cli("restore", "file", ref, "data.bin", "--to", to, "--repo", two.repo)
    assert done.rc == 0, (ref, done.err)
    assert (to / "data.bin").read_bytes() == two.data_bin[which]


@needs_fuse
@pytest.mark.fuse
@pytest.mark.parametrize("form", FORMS)
def test_mount_backup(two: Two, mount_repo: Callable[..., Mounted], form: str) -> None:
    ref, which = two.ref(form)
    m = mount_repo(two.repo, "--backup", ref)
    assert sorted(os.listdir(m.path / "web")) == [dir_time(two.started[which]), "latest"]

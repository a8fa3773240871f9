"""Disk full while a backup writes its file catalog (the listing of the guest's files stored
after the backup committed), on a real loop-mounted ext4 holding the repository (root only).

The guest disk is an ext4 image holding tens of thousands of files, so its listing takes far
more index space than the backup's own rows. It is backed up once without the file catalog;
then the repository's filesystem is filled to within ``leave`` bytes and it is backed up
again: the data deduplicates, so the new backup needs only a few pages and the listing is what
runs out of space. Each ``leave`` is one ``disk_full`` event: one clear line and a non-zero
exit (or success, when the space sufficed), `verify --full` clean, every earlier backup
restores byte-identical, and once the space is freed the next run succeeds and catalogs the
files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.catalog.test_gc_full_disk import fill
from tests.faults.contention import Ledger, MiB, one_error_line, random_image, sha256, vmaccel
from tests.faults.tally import Tally, record, scale
from tests.plugin.test_cli_oserrors import small_fs

__all__ = ["small_fs"]  # a fixture, imported for pytest to find

SUITE = "test_disk_full"
FILES = 16_000
NO_SPACE_EXIT = 15  # catalog.errors.NoSpaceLeft


@pytest.fixture(scope="module")
def many_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32 MiB raw ext4 image (no partition table) holding FILES empty files with long names."""
    if not shutil.which("mkfs.ext4"):
        pytest.skip("needs mkfs.ext4")
    base = tmp_path_factory.mktemp("manyfiles")
    tree = base / "tree"
    for d in range(4):
        sub = tree / f"directory-{d:02d}-with-a-rather-long-name"
        sub.mkdir(parents=True)
        for i in range(FILES // 4):
            (sub / f"file-{i:06d}-whose-name-is-long-enough-to-cost-space.txt").touch()
    (tree / "marker.txt").write_text("the file catalog holds me\n")
    image = base / "many.raw"
    with image.open("wb") as f:
        f.truncate(32 * MiB)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-N", str(FILES + 2000), "-I", "128", "-d", str(tree),
         str(image)],
        check=True, capture_output=True,
    )  # fmt: skip
    return image


def catalogued(ledger: Ledger, backup_id: int) -> bool:
    """Whether `files find` sees the marker file in ``backup_id``."""
    found = vmaccel("files", "find", "marker.txt", "--repo", ledger.repo, "--json")
    assert found.returncode == 0, found.stderr
    return any(hit["backup_id"] == backup_id for hit in json.loads(found.stdout))


def _failure_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one clear message of a failed backup: its one error line, or (the backup itself
    ran out of space: nothing committed) the error of its only VM in the ``--json`` report.
    The writer lease's rows and files make the backup need a little more room than the
    catalog alone, so the tightest ``leave`` can stop the backup before its commit."""
    if done.stderr.strip():
        return one_error_line(done.stderr)
    (vm,) = json.loads(done.stdout)["vms"]
    assert not vm["ok"] and vm["exit_code"] == NO_SPACE_EXIT, vm
    assert "no space left" in vm["error"] and "nothing was committed" in vm["error"], vm
    return str(vm["error"])


def test_disk_full_during_the_file_catalog_write(
    tmp_path: Path, small_fs: Path, many_files: Path
) -> None:
    tally = Tally(SUITE, "disk_full")
    ledger = Ledger(small_fs / "repo", tmp_path)
    assert vmaccel("repo", "init", "--repo", ledger.repo).returncode == 0
    ledger.backup(random_image(tmp_path / "earlier.raw", 4 * MiB, seed=1), "earlier")
    ledger.backup(many_files, "guest", "--no-file-index")
    digest = sha256(many_files)
    in_catalog = 0
    for k in range(1, 1 + scale(2, 24)):  # more room each time, until the backup fits
        leave = 64 * 1024 * k
        filler = fill(small_fs, leave)
        done = vmaccel("backup", "--repo", ledger.repo, "--source", f"file:{many_files}",
                       "--name", "guest", "--json")  # fmt: skip
        filler.unlink()
        new = set(ledger.listed()) - set(ledger.expected)
        for bid in new:  # a committed backup is a restore point, catalog or not
            ledger.expected[bid] = digest
        outcome = "ran"
        if done.returncode != 0:
            line = _failure_line(done)
            assert done.returncode == NO_SPACE_EXIT, done.stderr
            outcome = f"exit {done.returncode}: {line}"
            if new:  # the backup committed: the line must not say that nothing was
                assert "is complete" in line and "file catalog" in line, line
                assert "nothing was committed" not in line, line
                in_catalog += 1
        clean = ledger.verify_clean()
        lost, wrong = ledger.restores()
        tally.add(damaged=not clean, lost=bool(lost), wrong=bool(wrong))
        tally.notes.append(f"leave {leave}: {outcome}")
        if done.returncode == 0:
            break
    after = ledger.backup(many_files, "guest")
    assert catalogued(ledger, json.loads(after.stdout)["vms"][0]["backup_id"])
    record(tally)
    assert (tally.damaged, tally.lost, tally.wrong_bytes) == (0, 0, 0), tally
    assert in_catalog, tally.notes

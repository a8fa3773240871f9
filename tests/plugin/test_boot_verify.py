"""``vmaccel verify --boot``: a tiny Linux disk (testbed/guestimages/bootdisk.py) is backed up
and booted from the read-only mount under qemu (TCG in CI, a few seconds per boot).

Proof: the bootable disk passes with its time and a screenshot stored; the same disk with its
boot sector zeroed fails with "no bootable disk" in SeaBIOS's words; a kernel without /init
fails with its panic; a UEFI configuration boots through OVMF; no marker within the timeout
fails as a timeout. The repository's objects hash the same before and after (the only new
one is the screenshot), and nothing temporary is left: no mount, no qemu, no files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from testbed.guestimages import bootdisk
from tests.plugin.conftest import Cli
from tests.plugin.jsonshape import validate
from vmaccel.fusemount.mount import mounts
from vmaccel.service.context import Context
from vmaccel.vocabulary.errors import BootFailed

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (os.path.exists("/dev/fuse") and shutil.which("fusermount")),
        reason="needs /dev/fuse and fusermount",
    ),
]
MARKER = bootdisk.MARKER
EFI_CONFIG = (
    '<obj xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns="urn:vim25" '
    'xsi:type="VirtualMachineConfigInfo"><hardware><numCPU>1</numCPU><memoryMB>256</memoryMB>'
    '<device xsi:type="VirtualDisk"><key>2000</key><controllerKey>1000</controllerKey>'
    "<unitNumber>0</unitNumber></device></hardware><firmware>efi</firmware></obj>"
)


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary directory verify --boot works in, to see that it is left empty."""
    path = tmp_path / "tmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


def backed_up(cli: Cli, repo: Path, image: Path, name: str) -> int:
    done = cli(
        "backup", "--repo", repo, "--source", f"file:{image}", "--name", name,
        "--no-file-index", "--json",
    )  # fmt: skip
    assert done.rc == 0, done.err + done.out
    return int(done.json["vms"][0]["backup_id"])


def boot(cli: Cli, repo: Path, backup: int, *extra: str) -> tuple[int, dict[str, Any]]:
    done = cli("verify", "--repo", repo, "--boot", str(backup), "--json", *extra)
    assert done.out, done.err
    validate("verify --boot", done.json)
    return done.rc, done.json


def objects(repo: Path) -> dict[str, str]:
    """Object key -> sha256 of every object of the repository (not the index or locks)."""
    out = {}
    for top in ("config", "key", "packs", "backups", "screenshots"):
        for path in sorted([repo / top] if (repo / top).is_file() else (repo / top).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(repo))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def assert_nothing_left(scratch: Path) -> None:
    assert list(scratch.iterdir()) == []
    assert not [m for m in mounts() if str(scratch) in str(m)]
    running = []
    for proc in Path("/proc").iterdir():
        try:
            running.append((proc / "cmdline").read_bytes())
        except OSError:
            continue
    assert not [c for c in running if str(scratch).encode() in c]


def test_a_bootable_restore_point_passes_and_the_repository_stays_unchanged(
    cli: Cli, new_repo: Callable[[str], Path], tmp_path: Path, scratch: Path
) -> None:
    repo = new_repo("repo")
    bid = backed_up(cli, repo, bootdisk.boot_disk("bios"), "linux")
    before = objects(repo)
    shown = cli("backups", "show", str(bid), "--repo", repo, "--json").json

    rc, doc = boot(cli, repo, bid, "--expect", MARKER)  # accel auto: KVM if usable, else TCG

    assert rc == 0, doc
    assert (doc["passed"], doc["reason"], doc["firmware"], doc["disks"]) == (
        True, None, "bios", ["disk0"],
    )  # fmt: skip
    assert 0 < doc["seconds"] < 120 and MARKER in doc["console"]
    after = objects(repo)
    assert after == {**before, doc["screenshot"]: after[doc["screenshot"]]}
    record = cli("backups", "show", str(bid), "--repo", repo, "--json").json
    validate("backups show", record)
    assert record["boot"] == {k: doc[k] for k in record["boot"]}
    assert {**record, "boot": None, "meta": {**record["meta"], "boot": None}} == {
        **shown, "boot": None, "meta": {**shown["meta"], "boot": None},
    }  # fmt: skip
    shot = tmp_path / "screen.png"
    cli("backups", "show", str(bid), "--repo", repo, "--screenshot", shot)
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    text = cli("backups", "show", str(bid), "--repo", repo).out
    assert "boot test: booted, marker after" in text
    assert_nothing_left(scratch)


def test_a_zeroed_boot_sector_fails_with_no_bootable_disk(
    cli: Cli, new_repo: Callable[[str], Path], tmp_path: Path, scratch: Path
) -> None:
    zeroed = bootdisk.zero_boot_sector(bootdisk.boot_disk("bios"), tmp_path / "zeroed.img")
    repo = new_repo("repo")
    bid = backed_up(cli, repo, zeroed, "broken")
    rc, doc = boot(cli, repo, bid, "--expect", MARKER, "--accel", "tcg")
    assert rc == BootFailed.exit_code
    assert (doc["passed"], doc["reason"]) == (False, "no bootable disk")
    assert "Boot failed: not a bootable disk" in doc["detail"]
    assert doc["detail"].endswith("No bootable device.")
    assert doc["screenshot_format"] == "png"
    human = cli("verify", "--repo", repo, "--boot", str(bid), "--accel", "tcg")
    assert human.rc == BootFailed.exit_code
    assert f"backup {bid} of broken: did not boot: no bootable disk" in human.out
    assert_nothing_left(scratch)


def test_a_kernel_panic_fails_with_the_panic_reason(
    cli: Cli, new_repo: Callable[[str], Path], scratch: Path
) -> None:
    repo = new_repo("repo")
    bid = backed_up(cli, repo, bootdisk.boot_disk("bios", "panic"), "panics")
    rc, doc = boot(cli, repo, bid, "--expect", MARKER, "--accel", "tcg")
    assert rc == BootFailed.exit_code
    assert (doc["passed"], doc["reason"]) == (False, "kernel panic")
    assert doc["detail"] == (
        "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"
    )
    assert_nothing_left(scratch)


def test_a_uefi_restore_point_boots_with_ovmf(
    cli: Cli, new_repo: Callable[[str], Path], scratch: Path
) -> None:
    repo = new_repo("repo")
    bid = backed_up(cli, repo, bootdisk.boot_disk("efi"), "uefi")
    with Context(repo=repo).open(lease="backup") as r:  # as a vCenter backup would have saved
        b = r.backup(bid)
        r.set_backup_meta(b, replace(b.meta, config_xml=EFI_CONFIG))
    rc, doc = boot(cli, repo, bid, "--expect", MARKER, "--accel", "tcg")
    assert rc == 0, doc
    assert (doc["passed"], doc["firmware"]) == (True, "efi")
    assert_nothing_left(scratch)


def test_no_marker_within_the_timeout_fails_as_a_timeout(
    cli: Cli, new_repo: Callable[[str], Path], scratch: Path
) -> None:
    repo = new_repo("repo")
    bid = backed_up(cli, repo, bootdisk.boot_disk("bios"), "slow")
    rc, doc = boot(cli, repo, bid, "--timeout", "1", "--accel", "tcg")
    assert rc == BootFailed.exit_code
    assert (doc["reason"], doc["expect"]) == ("timeout", "login:")
    assert doc["detail"].startswith("no marker within 1 s")
    assert_nothing_left(scratch)

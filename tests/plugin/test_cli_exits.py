"""Every usage-error path of the CLI (UsageError in vmaccel/cli and what it calls) ends in exit
2 and its own message; the other documented exit codes (7, 10, 11, 12, 13) are reached
exactly. vCenter-side codes use the plugin bed; the rest need no vCenter."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from testbed.vsphere.bed import VsphereBed
from tests.plugin.conftest import PASSWORD_ENV, Cli
from tests.plugin.jsonshape import validate
from vmaccel.plugin.registry import Registry, VCenterEntry
from vmaccel.vocabulary.errors import (
    CertificateMismatch,
    ConnectionFailed,
    LoginFailed,
    TransportError,
)

PIN = "AA:" * 31 + "AA"  # a well-formed SHA-256 thumbprint no server presents
_DEAD_X = ["backup", "--repo", "{repo}", "--vcenter", "dead", "--vm", "x"]
_ADD = ["vcenter", "add", "v", "--url", "https://h/sdk", "--user", "u"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def registered(config_dir: Path) -> str:
    """vCenter "dead" in the registry (no login test): nothing listens at its address."""
    entry = VCenterEntry("dead", f"127.0.0.1:{_closed_port()}", "u", PIN, None, PASSWORD_ENV)
    Registry(config_dir).save(entry, None)
    return "dead"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["backups", "list"], "no repository given: pass --repo PATH or set VMACCEL_REPO"),
        (["backup", "--repo", "{repo}"], "give either --vcenter NAME with a VM selection, or"),
        (
            ["backup", "--repo", "{repo}", "--vcenter", "dead", "--source", "file:/x"],
            "give either --vcenter NAME with a VM selection, or --source",
        ),
        (["backup", "--repo", "{repo}", "--vcenter", "dead"], "select VMs with --vm, --folder"),
        (
            ["backup", "--repo", "{repo}", "--vcenter", "dead", "--vm", "x"],
            f"vCenter 'dead' takes its password from ${PASSWORD_ENV}, which is not set",
        ),
        (
            [*_DEAD_X, "--transport", "file", "--datastore-path", "nodir"],
            "--datastore-path 'nodir' is not DATASTORE=DIR",
        ),
        (
            ["backup", "--repo", "{repo}", "--vcenter", "dead", "--vm", "x", "--transport", "nbd"],
            "--transport nbd needs --nbd-command",
        ),
        (
            ["backup", "--repo", "{repo}", "--vcenter", "dead", "--vm", "x", "--transport", "ftp"],
            "unknown transport 'ftp'",
        ),
        (["backup", "--repo", "{repo}", "--source", "disk.img"], "is not file:PATH or nbd:URI"),
        (["backup", "--repo", "{repo}", "--source", "s3:x"], "unknown source kind 's3'"),
        (
            [*_ADD, "--thumbprint", PIN, "--ca-file", "ca.pem"],
            "give --thumbprint or --ca-file, not both",
        ),
        (
            [*_ADD, "--thumbprint", PIN, "--password-env", "VMACCEL_TEST_UNSET"],
            "$VMACCEL_TEST_UNSET is not set",
        ),
        (
            ["vcenter", "add", "v", "--url", "http://h/sdk", "--user", "u", "--thumbprint", PIN],
            "'http://h/sdk' is not an https://HOST[:PORT]/sdk URL",
        ),
        (["restore", "disk", "x@", "disk0", "--repo", "{repo}", "--to", "o"], "is not a backup"),
        (["mount", "mnt", "--repo", "{repo}", "--keep-overlay"], "--keep-overlay needs"),
        (["repo", "init", "--repo", "{new}", "--encryption", "gpg"], "unknown encryption 'gpg'"),
    ],
    ids=lambda v: " ".join(v[:3]) if isinstance(v, list) else "",
)
def test_usage_errors_exit_2_with_their_message(
    cli: Cli,
    new_repo: Callable[[str], Path],
    registered: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    monkeypatch.delenv("VMACCEL_TEST_UNSET", raising=False)
    if "which is not set" in message:
        monkeypatch.delenv(PASSWORD_ENV, raising=False)
    else:  # nothing listens at "dead": each error must come before any connection
        monkeypatch.setenv(PASSWORD_ENV, "pw")
    repo = new_repo("repo")
    argv = [a.format(repo=repo, new=tmp_path / "new") for a in args]
    r = cli(*argv)
    assert r.rc == 2, (r.rc, r.out, r.err)
    assert r.err.startswith("vmaccel: error: ") and message in r.err, r.err
    assert "Traceback" not in r.err and r.err.count("\n") == 1
    assert not (tmp_path / "new").exists()


def test_missing_source_exits_10(cli: Cli, new_repo: Callable[[str], Path], tmp_path: Path) -> None:
    repo = new_repo("repo")
    r = cli("backup", "--repo", repo, "--source", f"file:{tmp_path / 'gone.img'}", "--name", "x")
    assert r.rc == TransportError.exit_code == 10
    assert (
        r.err.strip()
        == f"vmaccel: error: cannot open {tmp_path / 'gone.img'}: No such file or directory"
    )
    assert cli("backups", "list", "--repo", repo, "--json").json == []


def test_unknown_vcenter_and_vm_exit_7(
    cli: Cli, new_repo: Callable[[str], Path], vcenter: str
) -> None:
    repo = new_repo("repo")
    r = cli("backup", "--repo", repo, "--vcenter", "nosuch", "--vm", "x")
    assert r.rc == 7 and "no vCenter named 'nosuch'" in r.err
    r = cli("backup", "--repo", repo, "--vcenter", vcenter, "--vm", "no-such-vm")
    assert r.rc == 7 and "no VM named 'no-such-vm' in vCenter bed" in r.err


def test_unreachable_vcenter_exits_11(
    cli: Cli, new_repo: Callable[[str], Path], registered: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "pw")
    r = cli("backup", "--repo", new_repo("repo"), "--vcenter", registered, "--vm", "x", "--json")
    assert r.rc == ConnectionFailed.exit_code == 11, r.err + r.out
    assert "cannot reach vCenter 127.0.0.1:" in r.err


def test_wrong_password_exits_12_and_wrong_pin_13(
    cli: Cli,
    new_repo: Callable[[str], Path],
    plugin_bed: VsphereBed,
    vcenter: str,
    config_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = new_repo("repo")
    vm = plugin_bed.control.vms()[0].name
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    r = cli("backup", "--repo", repo, "--vcenter", vcenter, "--vm", vm, "--json")
    assert r.rc == LoginFailed.exit_code == 12, r.err + r.out
    monkeypatch.setenv(PASSWORD_ENV, plugin_bed.password)
    entry = Registry(config_dir).get(vcenter)
    Registry(config_dir).save(
        VCenterEntry("pinned", entry.host, entry.user, PIN, None, PASSWORD_ENV), None
    )
    r = cli("backup", "--repo", repo, "--vcenter", "pinned", "--vm", vm, "--json")
    assert r.rc == CertificateMismatch.exit_code == 13, r.err + r.out
    listed = cli("vcenter", "list", "--json")
    assert listed.rc == 0
    validate("vcenter list", listed.json)
    assert listed.json["pinned"]["thumbprint"] == PIN
    assert cli("backups", "list", "--repo", repo, "--json").json == []

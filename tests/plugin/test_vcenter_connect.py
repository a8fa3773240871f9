"""Adding and reaching a vCenter: pinning, credentials and the one-line errors."""

from __future__ import annotations

import io
import json
import socket
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from testbed.vsphere.bed import VsphereBed
from tests.plugin.conftest import PASSWORD_ENV, VCENTER, Cli, Result, Tagger
from tests.plugin.imagecheck import complete_backups
from vmaccel.catalog import Repository

pytestmark = pytest.mark.vsphere

WRONG_PIN = "00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:" * 2


def one_line(result: Result, *words: str) -> str:
    assert result.rc != 0
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def add(cli: Cli, bed: VsphereBed, *extra: str, url: str | None = None) -> Result:
    return cli("vcenter", "add", VCENTER, "--url", url or bed.url, "--user", bed.user, *extra)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_first_contact_pins_the_certificate_and_a_stored_password_is_private(
    plugin_bed: VsphereBed, cli: Cli, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(plugin_bed.password + "\n"))
    result = add(cli, plugin_bed)
    assert result.rc == 0, result.err
    pin = plugin_bed.thumbprint_sha256.replace(":", "").lower()
    assert pin in result.out and "pinning" in result.out
    listed = cli("vcenter", "list", "--json").json[VCENTER]
    assert listed["thumbprint"] == pin and listed["password_env"] is None
    secret = config_dir / "secrets" / VCENTER
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((config_dir / "vcenters.json").stat().st_mode) == 0o600
    stored = json.loads((config_dir / "vcenters.json").read_text())[VCENTER]
    assert plugin_bed.password not in stored.values()
    assert stored["password_store"] == "file"
    assert secret.read_text().strip() == plugin_bed.password
    test = cli("vcenter", "test", VCENTER)
    assert test.rc == 0 and "VMs visible" in test.out, test.err


def test_ca_file_trust(plugin_bed: VsphereBed, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, plugin_bed.password)
    env = ("--password-env", PASSWORD_ENV)
    assert add(cli, plugin_bed, *env, "--ca-file", str(plugin_bed.ca_file)).rc == 0
    other_ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if other_ca.exists():
        one_line(
            add(cli, plugin_bed, *env, "--ca-file", str(other_ca)),
            "not signed by the configured CA",
        )


def test_wrong_password_is_one_line_and_nothing_is_stored(
    plugin_bed: VsphereBed,
    cli: Cli,
    config_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    new_repo: Callable[[str], Path],
) -> None:
    # The bed's SOAP login (vcsim's default user) takes any non-empty password; its vAPI
    # login checks the password. So a wrong SOAP password is an empty one here.
    pin = ("--thumbprint", plugin_bed.thumbprint_sha256)
    monkeypatch.setenv(PASSWORD_ENV, "")
    one_line(
        add(cli, plugin_bed, "--password-env", PASSWORD_ENV, *pin),
        "refused the login",
        plugin_bed.user,
    )
    assert not (config_dir / "vcenters.json").exists()

    # Added with the right password, run with a wrong one: nothing lands in the repository.
    monkeypatch.setenv(PASSWORD_ENV, plugin_bed.password)
    assert add(cli, plugin_bed, "--password-env", PASSWORD_ENV, *pin).rc == 0
    repo = new_repo("repo")
    vm = plugin_bed.control.vms()[0].name
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    one_line(
        cli("backup", "--repo", repo, "--vcenter", VCENTER, "--tag", "backup:x"),
        "refused the tagging login",
        plugin_bed.user,
    )
    monkeypatch.setenv(PASSWORD_ENV, "")
    one_line(cli("backup", "--repo", repo, "--vcenter", VCENTER, "--vm", vm), "refused the login")
    monkeypatch.delenv(PASSWORD_ENV)
    one_line(
        cli("backup", "--repo", repo, "--vcenter", VCENTER, "--vm", vm),
        f"${PASSWORD_ENV}",
        "not set",
    )
    with Repository.open(repo) as r:
        assert r.backups(state=None) == []  # not even a failed attempt


def test_pinned_thumbprint_mismatch_is_refused(
    plugin_bed: VsphereBed,
    cli: Cli,
    config_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    new_repo: Callable[[str], Path],
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, plugin_bed.password)
    result = add(cli, plugin_bed, "--password-env", PASSWORD_ENV, "--thumbprint", WRONG_PIN)
    one_line(result, "does not match the pinned thumbprint")
    assert not (config_dir / "vcenters.json").exists()
    one_line(
        add(cli, plugin_bed, "--password-env", PASSWORD_ENV, "--thumbprint", "abc"),
        "not a SHA-256 thumbprint",
    )

    # The certificate changes after the vCenter was added: backups refuse to talk to it.
    assert (
        add(
            cli,
            plugin_bed,
            "--password-env",
            PASSWORD_ENV,
            "--thumbprint",
            plugin_bed.thumbprint_sha256,
        ).rc
        == 0
    )
    registry = config_dir / "vcenters.json"
    entries = json.loads(registry.read_text())
    entries[VCENTER]["thumbprint"] = WRONG_PIN.replace(":", "")
    registry.write_text(json.dumps(entries))
    repo = new_repo("repo")
    vm = plugin_bed.control.vms()[0].name
    one_line(
        cli("backup", "--repo", repo, "--vcenter", VCENTER, "--vm", vm),
        "does not match the pinned thumbprint",
    )
    one_line(
        cli("backup", "--repo", repo, "--vcenter", VCENTER, "--tag", "backup:x"),
        "does not match the pinned thumbprint",
    )
    one_line(cli("vcenter", "test", VCENTER), "does not match the pinned thumbprint")
    assert complete_backups(repo) == 0


def test_unreachable_vcenter(
    plugin_bed: VsphereBed, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "x")
    url = f"https://127.0.0.1:{closed_port()}/sdk"
    one_line(add(cli, plugin_bed, "--password-env", PASSWORD_ENV, url=url), "cannot reach")
    one_line(
        add(
            cli,
            plugin_bed,
            "--password-env",
            PASSWORD_ENV,
            "--thumbprint",
            plugin_bed.thumbprint_sha256,
            url=url,
        ),
        "cannot reach",
    )


def test_unknown_vm_and_tag_are_clear_errors(
    plugin_bed: VsphereBed,
    vcenter: str,
    tagger: Tagger,
    cli: Cli,
    new_repo: Callable[[str], Path],
) -> None:
    repo = new_repo("repo")
    one_line(
        cli("backup", "--repo", repo, "--vcenter", vcenter, "--vm", "no-such-vm"),
        "no VM named 'no-such-vm'",
    )
    one_line(
        cli("backup", "--repo", repo, "--vcenter", vcenter, "--tag", "backup:no-such-tag"),
        "no-such-tag",
    )
    one_line(
        cli("backup", "--repo", repo, "--vcenter", vcenter, "--tag", "nocat:t"), "category 'nocat'"
    )
    one_line(
        cli("backup", "--repo", repo, "--vcenter", "nope", "--vm", "x"), "no vCenter named 'nope'"
    )
    assert complete_backups(repo) == 0

"""An encrypted repository through the CLI: `repo init --encryption repokey`, the passphrase
from VMACCEL_PASSPHRASE or typed at the prompt, exit 5 when it is wrong or cannot be asked,
and backup/restore byte-identical with no plaintext in the packs."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugin.clirepo import backup, ext4_image
from tests.plugin.conftest import Cli
from tests.plugin.jsonshape import validate
from vmaccel.vocabulary.errors import PassphraseError

VMACCEL = Path(sys.executable).with_name("vmaccel")
PASS = "correct horse"


def _typed(args: list[str | Path], answers: list[str]) -> subprocess.CompletedProcess[str]:
    """Run the installed CLI with a terminal as stdin, typing each of ``answers`` once its
    prompt (on stderr) appears: getpass flushes what was typed before it asked."""
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "VMACCEL_PASSPHRASE"}
    proc = subprocess.Popen(
        [VMACCEL, *map(str, args)],
        stdin=follower,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,  # no controlling terminal: getpass reads the pty stdin
    )
    assert proc.stderr is not None and proc.stdout is not None
    err = b""
    try:
        for asked, answer in enumerate(answers):
            while err.count(b": ") <= asked and proc.poll() is None:
                err += os.read(proc.stderr.fileno(), 4096)
            os.write(leader, f"{answer}\n".encode())
        out, rest = proc.communicate(timeout=60)
    finally:
        proc.kill()
        os.close(follower)
        os.close(leader)
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, out.decode(), (err + rest).decode()
    )


def test_repokey_backup_and_restore_through_the_cli(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, img = tmp_path / "repo", ext4_image(tmp_path, "a", 5, text=True)
    refused = cli("repo", "init", "--repo", repo, "--encryption", "repokey")
    assert refused.rc == 5 and "no terminal to ask on" in refused.err
    assert not repo.exists()  # nothing half-made blocks the next try
    monkeypatch.setenv("VMACCEL_PASSPHRASE", PASS)
    init = cli("repo", "init", "--repo", repo, "--encryption", "repokey")
    assert init.rc == 0 and "encryption repokey" in init.out, init.err
    validate("backup", backup(cli, repo, img, "a"))
    out = tmp_path / "restored.img"
    assert cli("restore", "disk", "a@latest", "disk0", "--repo", repo, "--to", out).rc == 0
    assert out.read_bytes() == img.read_bytes()
    files = tmp_path / "files"
    got = cli("restore", "file", "1", "data.bin", "--repo", repo, "--to", files, "--json")
    assert got.rc == 0, got.err
    assert (files / "data.bin").read_bytes() == (tmp_path / "a.src" / "data.bin").read_bytes()
    assert cli("verify", "--repo", repo, "--full", "--json").json["ok"]
    plain = b"line 5 line 5 line 5"  # what data.bin repeats, compressible or not
    for pack in (p for p in (repo / "packs").rglob("*") if p.is_file()):
        assert plain not in pack.read_bytes(), pack

    monkeypatch.setenv("VMACCEL_PASSPHRASE", "wrong")
    wrong = cli("backups", "list", "--repo", repo, "--json")
    assert (wrong.rc, wrong.out) == (PassphraseError.exit_code, "") and wrong.rc == 5
    assert "wrong passphrase for this repository" in wrong.err
    restore = cli("restore", "disk", "1", "disk0", "--repo", repo, "--to", tmp_path / "x")
    assert restore.rc == 5 and not (tmp_path / "x").exists()
    monkeypatch.delenv("VMACCEL_PASSPHRASE")
    unasked = cli("backups", "list", "--repo", repo)  # stdin is no terminal under pytest
    assert unasked.rc == 5
    assert "set VMACCEL_PASSPHRASE (no terminal to ask on)" in unasked.err


def test_passphrase_prompt_on_a_terminal(tmp_path: Path) -> None:
    repo, img = tmp_path / "repo", ext4_image(tmp_path, "a", 6)
    mismatch = _typed(["repo", "init", "--repo", repo, "--encryption", "repokey"], [PASS, "x"])
    assert mismatch.returncode == 5 and "the passphrases do not match" in mismatch.stderr
    assert not repo.exists()  # asked before anything is written: a retry is not blocked
    init = _typed(["repo", "init", "--repo", repo, "--encryption", "repokey"], [PASS, PASS])
    assert init.returncode == 0, init.stderr
    args: list[str | Path] = ["backup", "--repo", repo, "--source", f"file:{img}", "--name", "a"]
    assert _typed([*args, "--json"], [PASS]).returncode == 0
    listed = _typed(["backups", "list", "--repo", repo, "--json"], [PASS])
    assert listed.returncode == 0, listed.stderr
    assert "Repository passphrase:" in listed.stderr  # asked once, not echoed to stdout
    assert PASS not in listed.stdout + listed.stderr
    assert [b["vm"] for b in json.loads(listed.stdout)] == ["a"]
    wrong = _typed(["backups", "list", "--repo", repo], ["nope"])
    assert wrong.returncode == 5 and "wrong passphrase" in wrong.stderr

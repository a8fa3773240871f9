"""``vmaccel token create|list|revoke``: shown once, stored as a hash, listed without values."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from vmaccel.cli.app import main
from vmaccel.service import tokens
from vmaccel.service.context import Context


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_token_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMACCEL_CONFIG_DIR", str(tmp_path / "config"))
    repo = str(tmp_path / "repo")
    assert _run(capsys, "repo", "init", "--repo", repo)[0] == 0
    rc, out, err = _run(
        capsys, "token", "create", "--scope", "restore", "--name", "ci", "--repo", repo
    )
    assert rc == 0 and "not shown again" in err
    secret = out.strip()
    assert secret.startswith("vmaccel_") and len(secret) == len("vmaccel_") + 43
    ctx = Context(repo=Path(repo))
    row = tokens.authenticate(ctx, secret)
    assert row is not None and (row.name, row.scope) == ("ci", "restore")
    # Only the digest is stored: the value appears nowhere in the index.
    with sqlite3.connect(Path(repo) / "index.db") as db:
        (digest,) = db.execute("SELECT digest FROM api_token").fetchone()
    assert digest == hashlib.sha256(secret.encode()).digest()
    assert secret.encode() not in (Path(repo) / "index.db").read_bytes()

    rc, out, _ = _run(capsys, "token", "list", "--repo", repo, "--json")
    (listed,) = json.loads(out)
    assert listed["id"] == row.id and listed["revoked"] is None and secret not in out
    assert _run(capsys, "token", "revoke", str(row.id), "--repo", repo)[0] == 0
    assert tokens.authenticate(ctx, secret) is None
    rc, out, _ = _run(capsys, "token", "list", "--repo", repo, "--json")
    assert json.loads(out)[0]["revoked"] is not None
    rc, _, err = _run(capsys, "token", "revoke", "99", "--repo", repo)
    assert rc == 7 and "no API token 99" in err
    rc, _, _ = _run(capsys, "token", "create", "--scope", "root", "--repo", repo)
    assert rc == 2

"""Console users: scrypt hashes, add/passwd/rm/list through the CLI, sessions that expire
and end, the lockout per user and per address."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from vmaccel.cli.app import main
from vmaccel.service import users
from vmaccel.service.context import Context
from vmaccel.vocabulary.errors import NotFound, UsageError


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Context:
    monkeypatch.setenv("VMACCEL_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("VMACCEL_REPO", raising=False)
    monkeypatch.delenv("VMACCEL_PASSPHRASE", raising=False)
    repo = tmp_path / "repo"
    assert main(["repo", "init", "--repo", str(repo)]) == 0
    return Context(repo=repo, config_dir=tmp_path / "config")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_hash_is_scrypt_salted_and_verifies() -> None:
    first, second = users.hash_password("correct horse"), users.hash_password("correct horse")
    assert first != second  # a fresh salt each time
    algo, n, r, p, _, _ = first.split("$")
    assert (algo, int(n), int(r), int(p)) == ("scrypt", 2**15, 8, 1)
    assert users.verify_password("correct horse", first)
    assert not users.verify_password("correct horsf", first)
    assert not users.verify_password("x", "md5$whatever")


def test_cli_add_list_passwd_rm(
    ctx: Context, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = str(ctx.repo)
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-pass\n"))
    assert (
        main(["user", "add", "ann", "--role", "restore", "--password-stdin", "--repo", repo]) == 0
    )
    capsys.readouterr()
    assert main(["user", "list", "--repo", repo, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(u["name"], u["role"]) for u in listed] == [("ann", "restore")]
    assert "pwhash" not in listed[0] and "s3cret" not in json.dumps(listed)
    stored = users.list_users(ctx)[0].pwhash
    assert stored.startswith("scrypt$") and "s3cret-pass" not in stored

    opened = users.login(ctx, "ann", "s3cret-pass", "10.0.0.1", users.Lockout())
    assert users.session(ctx, opened.secret) is not None
    monkeypatch.setattr("sys.stdin", io.StringIO("n3w-password\n"))
    args = ["user", "passwd", "ann", "--role", "operator", "--password-stdin", "--repo", repo]
    assert main(args) == 0
    assert users.session(ctx, opened.secret) is None  # a new password ends the sessions
    assert users.list_users(ctx)[0].role == "operator"
    assert users.login(ctx, "ann", "n3w-password", "10.0.0.1", users.Lockout()).user.name == "ann"

    assert main(["user", "rm", "ann", "--repo", repo]) == 0
    assert users.list_users(ctx) == []
    with pytest.raises(NotFound):
        users.remove_user(ctx, "ann")


def test_bad_names_roles_and_short_passwords_are_refused(ctx: Context) -> None:
    with pytest.raises(UsageError, match="role"):
        users.add_user(ctx, "bob", "root", "long enough")
    with pytest.raises(UsageError, match="user name"):
        users.add_user(ctx, "Bob Smith", "admin", "long enough")
    with pytest.raises(UsageError, match="at least 8"):
        users.add_user(ctx, "bob", "admin", "short")
    users.add_user(ctx, "bob", "admin", "long enough")
    with pytest.raises(UsageError, match="exists"):
        users.add_user(ctx, "bob", "admin", "long enough")


def test_sessions_expire_and_log_out(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    users.add_user(ctx, "cy", "admin", "long enough")
    opened = users.login(ctx, "cy", "long enough", "h", users.Lockout())
    found = users.session(ctx, opened.secret)
    assert found is not None and found.user.name == "cy" and found.csrf == opened.csrf
    assert users.session(ctx, opened.secret + "x") is None
    later = time.time() + users.SESSION_SECONDS + 1
    monkeypatch.setattr(users.time, "time", lambda: later)
    assert users.session(ctx, opened.secret) is None
    monkeypatch.undo()
    users.logout(ctx, opened.secret)
    assert users.session(ctx, opened.secret) is None


def test_wrong_passwords_lock_the_user_then_the_window_frees_it(ctx: Context) -> None:
    users.add_user(ctx, "dee", "operator", "long enough")
    clock = Clock()
    lockout = users.Lockout(limit=3, window=60.0, clock=clock)
    for n in range(3):
        with pytest.raises(users.LoginRefused, match="wrong user name or password"):
            users.login(ctx, "dee", "wrong", f"10.0.0.{n}", lockout)  # three addresses
    with pytest.raises(users.LoginRefused, match="locked") as refused:
        users.login(ctx, "dee", "long enough", "10.0.0.9", lockout)  # even the right one
    assert refused.value.retry_after == pytest.approx(60.0)
    clock.now += 61
    assert users.login(ctx, "dee", "long enough", "10.0.0.9", lockout).user.name == "dee"


def test_one_address_guessing_many_names_is_locked(ctx: Context) -> None:
    users.add_user(ctx, "eve", "restore", "long enough")
    lockout = users.Lockout(limit=3, window=60.0, clock=Clock())
    for name in ("a", "b", "c"):
        with pytest.raises(users.LoginRefused, match="wrong"):
            users.login(ctx, name, "guess", "192.0.2.7", lockout)
    with pytest.raises(users.LoginRefused, match="locked"):
        users.login(ctx, "eve", "long enough", "192.0.2.7", lockout)
    assert users.login(ctx, "eve", "long enough", "192.0.2.8", lockout).user.name == "eve"

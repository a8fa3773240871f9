"""The vCenter registry (plugin/registry.py): what is written where, with which modes."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from vmaccel.plugin import registry
from vmaccel.plugin.registry import Registry, VCenterEntry, parse_url
from vmaccel.vocabulary.errors import NotFound, UsageError

SECRET = "s3cret-Pa55"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def _no_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    # Whatever keyring the machine may have, these tests exercise the file store.
    monkeypatch.setattr(registry, "_keyring_set", lambda name, password: False)


def test_password_env_stores_only_the_variable_name(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "cfg")
    entry = VCenterEntry(
        "vc1", "vc.example:8443", "admin", thumbprint="ab" * 32, password_env="VC_PW"
    )
    saved = reg.save(entry, SECRET)
    assert saved.password_store is None
    text = reg.file.read_text()
    assert SECRET not in text
    assert json.loads(text)["vc1"]["password_env"] == "VC_PW"
    assert not (tmp_path / "cfg" / "secrets").exists()
    assert mode(reg.file) == 0o600
    assert reg.password(reg.get("vc1"), {"VC_PW": "from-env"}) == "from-env"
    with pytest.raises(UsageError, match=r"\$VC_PW"):
        reg.password(reg.get("vc1"), {})
    endpoint = reg.endpoint("vc1", {"VC_PW": "x"})
    assert (endpoint.hostname, endpoint.port, endpoint.user) == ("vc.example", 8443, "admin")
    assert endpoint.trust.thumbprint == "ab" * 32


def test_a_stored_password_is_0600_in_a_0700_directory(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    reg = Registry(cfg)
    saved = reg.save(VCenterEntry("vc2", "vc2.example", "root", ca_file="/ca.pem"), SECRET)
    assert saved.password_store == "file"
    secret = cfg / "secrets" / "vc2"
    assert mode(cfg / "secrets") == 0o700
    assert mode(secret) == 0o600
    assert mode(reg.file) == 0o600
    assert SECRET not in reg.file.read_text()
    assert reg.password(reg.get("vc2"), {}) == SECRET
    # A secrets directory someone loosened is tightened again at the next save.
    (cfg / "secrets").chmod(0o755)
    reg.save(VCenterEntry("vc3", "vc3.example", "root", ca_file="/ca.pem"), "other")
    assert mode(cfg / "secrets") == 0o700
    assert sorted(reg.entries()) == ["vc2", "vc3"]
    # Losing the secret file is a clear error, not an empty password.
    secret.unlink()
    with pytest.raises(NotFound, match="no stored password"):
        reg.password(reg.get("vc2"), {})


def test_vcenters_json_is_0600_even_if_it_was_not(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.save(VCenterEntry("a", "h", "u", thumbprint="cd" * 32, password_env="X"), None)
    reg.file.chmod(0o644)
    reg.save(VCenterEntry("b", "h", "u", thumbprint="cd" * 32, password_env="X"), None)
    assert mode(reg.file) == 0o600


def test_unknown_vcenter_and_urls(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="vcenter add"):
        Registry(tmp_path).get("nope")
    assert parse_url("https://vc.example/sdk") == "vc.example"
    assert parse_url("https://10.0.0.1:8443/sdk") == "10.0.0.1:8443"
    for bad in ("http://vc/sdk", "vc.example", "https:///sdk"):
        with pytest.raises(UsageError):
            parse_url(bad)

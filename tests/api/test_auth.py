"""Tokens over HTTPS: revoked ones are refused at once, failed attempts are limited per
client address (429 with Retry-After), no token value reaches a log; the OpenAPI document
validates."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from tests.api.conftest import Api, serve_process
from vmaccel.api.app import ApiSettings
from vmaccel.api.auth import FailedAttempts
from vmaccel.api.jsonbody import AsciiJSONResponse
from vmaccel.cli.app import main
from vmaccel.service import tokens
from vmaccel.service.context import Context


def test_a_revoked_token_is_refused_from_the_next_request_on(api: Api) -> None:
    made = api.call("POST", "/tokens", "admin", json={"scope": "read", "name": "short-lived"})
    assert made.status_code == 201
    secret, token_id = made.json()["token"], made.json()["id"]
    assert api.call("GET", "/vms", token=secret).status_code == 200
    listed = api.call("GET", "/tokens", "admin").json()
    assert secret not in str(listed)  # listed without its value
    assert {t["id"]: t["revoked"] for t in listed}[token_id] is None
    assert api.call("DELETE", f"/tokens/{token_id}", "admin").status_code == 200
    refused = api.call("GET", "/vms", token=secret)
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "the API token is unknown or revoked"
    # Revoked with the CLI's function (another process would do the same): refused too.
    other = tokens.create_token(api.ctx, "read")
    assert api.call("GET", "/vms", token=other.secret).status_code == 200
    tokens.revoke_token(api.ctx, other.token.id)
    assert api.call("GET", "/vms", token=other.secret).status_code == 401


def test_failed_attempts_are_limited_per_address(api: Api, tmp_path: Path) -> None:
    """A server of its own (one daemon per repository: a repository of its own too), so the
    address it blocks is blocked nowhere else."""
    ctx = Context(repo=tmp_path / "repo", config_dir=tmp_path / "config")
    assert main(["repo", "init", "--repo", str(ctx.repo)]) == 0
    admin = tokens.create_token(ctx, "admin").secret
    limit = ApiSettings().failed_limit
    with serve_process(ctx, tmp_path / "serve.log") as info:
        limited = Api(info, tmp_path / "repo", ctx, {"admin": admin})
        assert limited.call("GET", "/vms", "admin").status_code == 200
        for i in range(limit):
            wrong = limited.call("GET", "/vms", token=f"vmaccel_wrong{i}")
            assert wrong.status_code == 401
        # The limit holds for the address, whatever the token: guessing cannot go on.
        for token in ("vmaccel_wrong", admin):
            blocked = limited.call("GET", "/vms", token=token)
            assert blocked.status_code == 429
            assert 50 <= int(blocked.headers["Retry-After"]) <= ApiSettings().failed_window
            assert blocked.json()["error"]["status"] == 429
        assert limited.call("GET", "/health").status_code == 200  # needs no token
    # The other server (its own counts) still serves the same address.
    assert api.call("GET", "/vms", "read").status_code == 200


def test_the_window_slides() -> None:
    now = [1000.0]
    attempts = FailedAttempts(limit=2, window=10.0, clock=lambda: now[0])
    attempts.fail("a")
    now[0] += 4
    attempts.fail("a")
    assert attempts.retry_after("a") == pytest.approx(6.0)
    assert attempts.retry_after("b") == 0.0
    now[0] += 6.5  # the first failure left the window
    assert attempts.retry_after("a") == 0.0
    attempts.fail("a")
    assert attempts.retry_after("a") == pytest.approx(3.5)


def test_no_token_value_is_logged(api: Api) -> None:
    made = api.call("POST", "/tokens", "admin", json={"scope": "admin"}).json()
    api.call("GET", "/tokens", token=made["token"])
    api.call("GET", "/vms", token="vmaccel_not-a-token-at-all")
    api.call("DELETE", f"/tokens/{made['id']}", "admin")
    assert api.output is not None
    deadline = time.monotonic() + 10
    while "refused an unknown or revoked API token" not in (text := api.output.read_text()):
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(0.1)
    assert "DELETE /api/v1/tokens/" in text  # the access log is on
    for secret in (made["token"], "vmaccel_not-a-token-at-all", *api.tokens.values()):
        assert secret not in text


def test_the_openapi_document_validates(api: Api) -> None:
    assert api.call("GET", "/openapi.json").status_code == 401  # only /health needs none
    got = api.call("GET", "/openapi.json", "read")
    assert got.status_code == 200
    doc = got.json()
    validate(doc)
    assert doc["openapi"].startswith("3.")
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    download = doc["paths"]["/api/v1/backups/{ref}/download"]["get"]
    assert {"200", "206", "401", "403", "416"} <= set(download["responses"])


def test_guest_names_that_are_not_utf8_stay_writable() -> None:
    name = b"caf\xe9".decode("utf-8", "surrogateescape")  # as the file catalog keeps it
    body = AsciiJSONResponse({"name": name}).body
    assert body == b'{"name":"caf\\udce9"}'  # as the CLI's --json writes it

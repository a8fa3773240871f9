"""Passwords, passphrases and key material never reach stdout, stderr, logs or ``--json``.

Every command runs as its own process with ``--debug`` (debug logs of every library, tracebacks
on failure) against the vSphere bed, whose password is random per run: ``vcenter add`` with the
password in an environment variable, then with it on stdin (stored), backups of an encrypted
repository through both, and the failures that print tracebacks (a wrong passphrase, a wrong
vCenter password). Each secret is searched for as is, base64-encoded (HTTP basic auth, alone
and as ``user:password``), URL-encoded and, for the master key, as hex and base64.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from testbed.vsphere.bed import VmInfo, VsphereBed
from tests.plugin.conftest import Tagger
from vmaccel.catalog import Repository
from vmaccel.catalog.repository import read_key
from vmaccel.vocabulary.errors import LoginFailed

PASSPHRASE = "leak-test passphrase 5d0e91c7"
WRONG_PASSPHRASE = "leak-test wrong passphrase 2b7f"
WRONG_PASSWORD = "leak-test wrong vc password 8a3c"
ROOT = Path(__file__).resolve().parents[2]


def forms(secret: bytes | str, user: str = "") -> set[bytes]:
    """The ways ``secret`` could be written out: raw, hex, base64, URL-encoded, basic auth."""
    raw = secret.encode() if isinstance(secret, str) else secret
    out = {raw, base64.b64encode(raw).rstrip(b"=")}
    if isinstance(secret, str):
        out.add(quote(secret, safe="").encode())
        out.add(base64.b64encode(f"{user}:{secret}".encode()).rstrip(b"="))
    else:
        out.add(raw.hex().encode())
    return {f for f in out if len(f) >= 8}


class Runner:
    """Runs ``vmaccel --debug ARGS`` in a child process; keeps everything it printed."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.output: list[bytes] = []

    def __call__(self, *args: str | Path, stdin: str = "", rc: int = 0) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "vmaccel.cli", "--debug", *map(str, args)],
            input=stdin.encode(),
            capture_output=True,
            env=self.env,
            cwd=ROOT,
            timeout=300,
            check=False,
        )
        self.output += [proc.stdout, proc.stderr]
        assert proc.returncode == rc, proc.stderr.decode(errors="replace")[-3000:]
        return proc.stdout.decode()


def test_no_secret_in_any_output(
    tmp_path: Path, plugin_bed: VsphereBed, fresh_vm: Callable[[], VmInfo], tagger: Tagger
) -> None:
    vm = fresh_vm()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VMACCEL_")},
        "VMACCEL_CONFIG_DIR": str(tmp_path / "config"),
        "VMACCEL_PASSPHRASE": PASSPHRASE,
        "VC_PASSWORD": plugin_bed.password,
    }
    run = Runner(env)
    url, user, pin = plugin_bed.url, plugin_bed.user, plugin_bed.thumbprint_sha256
    common = ["--url", url, "--user", user, "--thumbprint", pin]
    run("vcenter", "add", "byenv", *common, "--password-env", "VC_PASSWORD")
    run("vcenter", "add", "stored", *common, stdin=plugin_bed.password + "\n")
    run("vcenter", "list", "--json")
    repo = tmp_path / "repo"
    run("repo", "init", "--repo", repo, "--encryption", "repokey")
    # By name (SOAP only), then by tag (a vAPI login too: HTTP basic auth).
    by_tag = ["--tag", tagger.tag(vm.moref, "leak-test")]
    for vcenter, select in (("byenv", ["--vm", vm.name]), ("stored", by_tag)):
        report = run("backup", "--repo", repo, "--vcenter", vcenter, *select, "--json")
        assert '"ok": true' in report
    run("backups", "list", "--repo", repo, "--json")
    run("repo", "stats", "--repo", repo, "--json")
    run("vcenter", "test", "stored")

    # Failures print tracebacks under --debug: they must not carry the secret either.
    run.env = {**env, "VMACCEL_PASSPHRASE": WRONG_PASSPHRASE}
    run("backups", "list", "--repo", repo, rc=5)
    run.env = {**env, "VC_PASSWORD": WRONG_PASSWORD}
    run(
        "vcenter",
        "add",
        "wrong",
        *common,
        "--password-env",
        "VC_PASSWORD",
        rc=LoginFailed.exit_code,
    )

    with Repository.open(repo, passphrase=PASSPHRASE) as r:
        key = read_key(r.store, repo, r.config, PASSPHRASE)
    assert key is not None
    secrets = {
        "vCenter password": forms(plugin_bed.password, user),
        "passphrase": forms(PASSPHRASE),
        "wrong passphrase": forms(WRONG_PASSPHRASE),
        "wrong vCenter password": forms(WRONG_PASSWORD, user),
        "master key (enc)": forms(key.enc_key),
        "master key (id)": forms(key.id_key),
    }
    printed = b"\n".join(run.output)
    assert b"DEBUG" in printed  # the debug logs were on
    assert b"refused the login of" in printed  # and the failures' output was kept
    leaked = {name for name, ways in secrets.items() if any(w in printed for w in ways)}
    assert leaked == set()

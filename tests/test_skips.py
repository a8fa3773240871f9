"""The skip policy: under --strict-skips (or CI=true) a skip outside the allow-list fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests import skips

ROOT = Path(__file__).resolve().parent.parent

_CASES = """
import pytest

def test_setup_fault():
    pytest.skip("missing tools: mkfs.ext4")

def test_opt_in():
    pytest.skip("set VMACCEL_CORRUPTION_SWEEP=1")

@pytest.mark.skipif(True, reason="needs root (loop mounts)")
def test_marked():
    pass

@pytest.mark.xfail(reason="known", strict=False)
def test_xfail():
    assert False

def test_passes():
    pass
"""


_PYTEST: tuple[str, ...] = (sys.executable, "-m", "pytest", "-p", "tests.conftest", "-rs", "-q")


def _run(tmp_path: Path, *flags: str, ci: str = "") -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_cases.py").write_text(_CASES)
    env = {**os.environ, "CI": ci}
    return subprocess.run(
        [
            *_PYTEST,
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            *flags,
            str(tmp_path / "test_cases.py"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_reasons() -> None:
    assert skips.allowed("set VMACCEL_CORRUPTION_SWEEP=1")
    assert skips.allowed("mkfs.xfs no longer makes v4 filesystems")
    assert not skips.allowed("missing tools: mkfs.ext4")
    assert not skips.allowed("cannot mount xfs here: mount failed")
    assert skips.strict(False, {"CI": "true"}) and skips.strict(True, {})
    assert not skips.strict(False, {"CI": ""})


def test_strict_fails_setup_skips_only(tmp_path: Path) -> None:
    r = _run(tmp_path, "--strict-skips")
    assert r.returncode == 1, r.stdout + r.stderr
    tail = r.stdout.strip().splitlines()[-1]
    # A skip in the call fails the test; one at setup (a skipif mark, a fixture) is an error.
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error" in tail, r.stdout
    assert "skipped where CI must run it: missing tools: mkfs.ext4" in r.stdout
    assert "skipped where CI must run it: needs root (loop mounts)" in r.stdout
    assert "SKIPPED [1]" in r.stdout and "VMACCEL_CORRUPTION_SWEEP" in r.stdout


def test_ci_turns_the_policy_on_and_plain_runs_only_list_skips(tmp_path: Path) -> None:
    assert _run(tmp_path, ci="true").returncode == 1
    plain = _run(tmp_path)
    assert plain.returncode == 0, plain.stdout
    assert "1 passed, 3 skipped, 1 xfailed" in plain.stdout.strip().splitlines()[-1]

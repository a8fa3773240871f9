"""The skip policy: which skips are legitimate, in one place.

CI installs every tool the suite drives (scripts/setup.sh) and runs as root, so a test that
skips there has lost its proof silently: a missing mkfs, a failed loop mount, a broken FUSE.
With the policy on (``--strict-skips``, or ``CI=true`` in the environment) a skip whose reason
matches none of :data:`ALLOWED` is reported as a failure instead. ``scripts/test.sh`` turns it
on; a developer without root runs pytest directly and sees the skips listed (``-rs``).
"""

from __future__ import annotations

import os
import re
from typing import Final

# Reasons (regular expressions, searched in the skip message) that no CI setup can or should
# change. Everything else is a setup fault when the policy is on.
ALLOWED: Final[dict[str, str]] = {
    # Opt-in runs: CI runs the quick counts; the long ones are benches of their own.
    r"VMACCEL_CORRUPTION_SWEEP": "the opt-in corruption sweep (seconds per filesystem x 1000)",
    r"VMACCEL_FAULTS_LONG": "the long fault-matrix counts (bench/bench_faults.py runs them)",
    # The host's xfsprogs decides this, not our setup: v4 is deprecated upstream.
    r"mkfs\.xfs no longer makes v4 filesystems": "xfsprogs dropped v4 (crc=0) filesystems",
}

_PATTERN: Final = re.compile("|".join(f"(?:{p})" for p in ALLOWED))


def strict(option: bool, env: dict[str, str] | None = None) -> bool:
    """Is the policy on: the ``--strict-skips`` flag, or ``CI`` set to true."""
    ci = (os.environ if env is None else env).get("CI", "")
    return option or ci.lower() in ("1", "true", "yes")


def allowed(reason: str) -> bool:
    """Is a skip with this message legitimate under the policy."""
    return _PATTERN.search(reason) is not None


def skip_reason(longrepr: object) -> str:
    """The message of a skip report's ``longrepr`` (a (path, line, message) tuple)."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)

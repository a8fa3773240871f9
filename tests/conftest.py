"""Shared pytest configuration: the test bed fixtures live in their own modules; the skip
policy (tests/skips.py) turns a skip CI should never see into a failure."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests import skips

pytest_plugins = [
    "tests.guestimages.fixtures",
    "tests.vsphere.fixtures",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--strict-skips",
        action="store_true",
        default=False,
        help="Fail tests that skip for a reason not allowed in tests/skips.py (on when CI=true).",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    if not skips.strict(bool(item.config.getoption("--strict-skips"))):
        return
    reason = skips.skip_reason(report.longrepr)
    if skips.allowed(reason):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped where CI must run it: {reason}\n"
        "(a legitimate skip reason belongs in tests/skips.py ALLOWED)"
    )

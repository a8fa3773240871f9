"""Fixtures of the console's browser tests: Debian's Chromium (never a downloaded browser),
headless, trusting the server's self-signed certificate, with every request the page makes
recorded. Screenshots of each page go to ``$VMACCEL_SCREENSHOTS`` (default: a directory under
the system's temporary directory): a test run never changes the tree. docs/screenshots holds
the ones the README shows, taken with ``VMACCEL_SCREENSHOTS=docs/screenshots``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Playwright

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(
    os.environ.get("VMACCEL_SCREENSHOTS")
    or Path(tempfile.gettempdir()) / "vmaccel-console-screenshots"
)
PHONE = {"width": 375, "height": 740}


@pytest.fixture(scope="session")
def chromium(playwright: Playwright) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium package is not installed (apt install chromium)")
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
    yield browser
    browser.close()


class Tab:
    """A page of its own context (its own cookies) and the hosts of every request it made."""

    def __init__(self, browser: Browser, base: str, **context: Any) -> None:
        self.base = base
        self.context = browser.new_context(ignore_https_errors=True, accept_downloads=True,
                                           **context)  # fmt: skip
        self.page: Page = self.context.new_page()
        self.hosts: set[str] = set()
        self.page.on("request", lambda r: self.hosts.add(urlsplit(r.url).netloc))

    def go(self, path: str) -> Page:
        self.page.goto(self.base + path)
        return self.page

    def login(self, name: str, password: str) -> Page:
        page = self.go("/console/login")
        page.get_by_label("User name").fill(name)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()
        return page

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()

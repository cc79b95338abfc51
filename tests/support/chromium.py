"""Debian's headless Chromium, driven by Playwright for Python, for the real-browser end-to-end tests.

Playwright's own browser download is never used (it is not reachable from CI): `launch()` starts
`/usr/bin/chromium`, which `make system-deps` installs with apt-get, under the `playwright` Python
package from the `dev` extra. Both are hard requirements: when either is missing, `require_chromium()`
fails the test with the command that installs it rather than skipping, because a skipped browser test
looks green while proving nothing.

Playwright is imported lazily, so a missing package fails each browser test with that message instead
of breaking the collection of the whole test suite.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking, component-update and sync switches Chromium opens connections of
# its own at start-up (updates, sync, field trials), which this machine refuses; QUIC is off so every
# request is plain HTTP over the loopback TCP the servers listen on.
LAUNCH_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# Playwright turns the back/forward cache off by default; people's browsers have it on, and whether the
# back button can show a page again after sign-out is one of the things these tests are about.
DROPPED_DEFAULT_ARGS = ["--disable-back-forward-cache"]
# Short enough that a page which never arrives fails the test in seconds, long enough for a loaded CI box.
ACTION_TIMEOUT_MS = 5_000
NAVIGATION_TIMEOUT_MS = 10_000

MISSING_PLAYWRIGHT = (
    "The browser tests need the `playwright` Python package (the `dev` extra): "
    "run `.venv/bin/pip install -e '.[dev]'` (or `make unit`). Do not run `playwright install`: "
    f"the tests drive Debian's {CHROMIUM}."
)
MISSING_CHROMIUM = (
    f"The browser tests need Debian's Chromium at {CHROMIUM}: run `make system-deps` "
    "(apt-get install chromium)."
)


def require_chromium() -> None:
    """Fail the calling test, with the install command, unless Playwright and Chromium are both present."""
    if importlib.util.find_spec("playwright") is None:
        pytest.fail(MISSING_PLAYWRIGHT, pytrace=False)
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(MISSING_CHROMIUM, pytrace=False)


@asynccontextmanager
async def launch() -> AsyncIterator[Browser]:
    """A headless Chromium for the duration of the block (one per test: a launch costs under a second)."""
    require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=list(LAUNCH_ARGS), ignore_default_args=DROPPED_DEFAULT_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


async def new_context(browser: Browser, **options: Any) -> BrowserContext:
    """A fresh profile (its own cookies and history) with the short timeouts above."""
    context = await browser.new_context(**options)
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    context.set_default_navigation_timeout(NAVIGATION_TIMEOUT_MS)
    return context


def expect(target: Any) -> Any:
    """Playwright's retrying `expect` (5 s), imported only once `require_chromium()` has vouched for it."""
    from playwright.async_api import expect as playwright_expect

    return playwright_expect(target)

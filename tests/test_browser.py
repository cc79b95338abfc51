"""A real browser against the running demo: headless Chromium, the fake CentralAuth, the proxy, whoami.

What the HTTP-level tests assume about browsers, checked with one: redirects through the login form
and back to a deep link, cookies set on a redirect and sent on the next request, two tabs with two
login transactions, the websocket through the proxy, `Sec-Fetch-Site` on sign-out, what the back button
does after sign-out, and the pages' layout on a phone-sized screen.

Each test gets its own demo from `start_demo()` on free loopback ports and its own browser context (a
fresh profile) in a Chromium shared by the module (see support/chromium.py: Debian's `/usr/bin/chromium`
under Playwright, a hard requirement — a missing browser fails these tests, it never skips them).
Screenshots of the pages people see go to `test-artifacts/screenshots/` at the repository root, for a
human to look at.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from support.chromium import expect, launch, new_context, require_chromium
from support.harness import free_port

from authproxy.app import build_app, make_runner
from authproxy.config import Config
from authproxy.demo.run import DEMO_USERS, Demo, start_demo

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page, Response, Route

ADA = DEMO_USERS[0]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"
# A blank page shot here is under 5 KB, one with a lone heading about 7 KB; the real ones are 13 KB and up.
MIN_SCREENSHOT_BYTES = 10_000
DESKTOP: dict[str, Any] = {"viewport": {"width": 1280, "height": 800}}
PHONE: dict[str, Any] = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
WS_OK = re.compile(r"^ok \(echoed \d+ bytes\)$")
# The session check TTL of the proxy in the revocation test, instead of the demo's 10 s.
QUICK_TTL = 0.5

# One Chromium serves the whole module (a launch costs most of a second); isolation comes from a fresh
# browser context per test, with its own cookies and history, and a fresh demo per test. The browser is
# bound to the event loop that started it, so the tests and every async fixture here share one loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")
async_fixture = pytest_asyncio.fixture(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium() -> AsyncIterator[Browser]:
    async with launch() as browser:
        yield browser


@async_fixture
async def demo() -> AsyncIterator[Demo]:
    demo = await start_demo(port=0, idp_port=0, app_port=0)
    yield demo
    await demo.stop()


@async_fixture
async def context(chromium: Browser, demo: Demo) -> AsyncIterator[BrowserContext]:
    # Depends on `demo` so the context, and its keep-alive connections, close before the servers stop.
    context = await new_context(chromium, **DESKTOP)
    yield context
    await context.close()


@async_fixture
async def page(context: BrowserContext) -> Page:
    return await context.new_page()


@async_fixture
async def quick_proxy(demo: Demo) -> AsyncIterator[str]:
    """A second proxy in front of the demo's CentralAuth and whoami app, re-checking sessions every 0.5 s.

    `start_demo()` fixes `session_check_ttl` at 10 s, a good pace for people trying the demo but not for a
    test; this proxy is built the way `start_demo()` builds its own, from the demo's config with only the
    address and the TTL changed.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = demo.config.model_dump()
    settings["server"].update(listen=f"127.0.0.1:{port}", public_url=url)
    settings["centralauth"]["session_check_ttl"] = QUICK_TTL
    runner = make_runner(build_app(Config(**settings)))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield url
    await runner.cleanup()


async def expect_login_form(page: Page, demo: Demo) -> None:
    """The browser shows the fake CentralAuth's e-mail form, that is: it is being asked to log in."""
    await expect(page).to_have_url(re.compile("^" + re.escape(f"{demo.idp_url}/login?")))
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(page.locator("input#email")).to_be_editable()


async def log_in(page: Page, demo: Demo, email: str) -> None:
    """Type the e-mail into the login form the page shows and submit it, as a person would."""
    await expect_login_form(page, demo)
    await page.locator("input#email").fill(email)
    await page.get_by_role("button", name="Continue").click()


async def expect_whoami(page: Page, url: str, email: str) -> None:
    """The proxied whoami page at `url`, rendered for `email` (the login form also has an `#email`)."""
    await expect(page).to_have_url(url)
    await expect(page.locator("span#email")).to_have_text(email)


async def has_session(context: BrowserContext, demo: Demo, url: str) -> bool:
    """Whether the browser holds the proxy's session cookie for `url`."""
    cookies = await context.cookies(url)
    return any(cookie["name"] == demo.config.session.cookie_name for cookie in cookies)


async def shoot(page: Page, name: str) -> Path:
    """A full-page PNG in test-artifacts/screenshots/, checked to exist and to show more than a blank page."""
    image = await page.screenshot(full_page=True)
    assert len(image) > MIN_SCREENSHOT_BYTES, f"{name}: only {len(image)} bytes, a blank or broken page?"
    path = save_screenshot(name, image)
    assert path.is_file() and path.stat().st_size > MIN_SCREENSHOT_BYTES, path
    return path


def save_screenshot(name: str, image: bytes) -> Path:
    """Write under a temporary name, then rename into place: a test run going on at the same time in the
    same checkout never sees, or leaves behind, a half-written screenshot."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    with tempfile.NamedTemporaryFile(dir=SCREENSHOTS, prefix=f".{name}.", delete=False) as part:
        part.write(image)
    Path(part.name).chmod(0o644)  # readable by whoever collects the artifacts, like any other file here
    Path(part.name).replace(path)
    return path


async def test_chromium_and_playwright_are_installed() -> None:
    """Without them every test below fails too (never skips); this one says so first, and plainly."""
    require_chromium()


async def test_sign_in_websocket_and_sign_out(context: BrowserContext, page: Page, demo: Demo) -> None:
    home = f"{demo.proxy_url}/"
    await page.goto(home)
    await log_in(page, demo, ADA)
    await expect_whoami(page, home, ADA)
    await expect(page.locator("#ws-status")).to_have_text(WS_OK)
    assert await has_session(context, demo, home)

    await page.locator("#sign-out").click()
    # The sign-out redirects to `/`, which without a session goes straight on to CentralAuth.
    await expect_login_form(page, demo)
    assert not await has_session(context, demo, home)
    await page.goto(home)
    await expect_login_form(page, demo)


async def test_deep_link_is_where_login_returns(page: Page, demo: Demo) -> None:
    target = f"{demo.proxy_url}/api/whoami?x=1"
    await page.goto(target)
    async with page.expect_response(lambda response: response.url == target) as landed:
        await log_in(page, demo, ADA)
    await expect(page).to_have_url(target)
    answer = await landed.value
    assert answer.status == 200
    body = await answer.json()
    assert body["X-Forwarded-Email"] == ADA
    assert body["path"] == "/api/whoami?x=1"


async def test_two_tabs_logging_in_at_once(context: BrowserContext, demo: Demo) -> None:
    home = f"{demo.proxy_url}/"
    tabs = [await context.new_page(), await context.new_page()]
    for tab in tabs:
        await tab.goto(home)
        await expect_login_form(tab, demo)
    # Each tab started its own login transaction: its own state in the URL and its own cookie, so
    # neither callback can find the other's transaction gone ("sign-in expired").
    assert tabs[0].url != tabs[1].url

    await asyncio.gather(*(log_in(tab, demo, ADA) for tab in tabs))
    for tab in tabs:
        await expect_whoami(tab, home, ADA)
        await expect(tab.get_by_role("heading", name=re.compile("Sign-in (failed|expired)"))).to_have_count(0)


async def test_back_after_sign_out_asks_the_proxy_again(
    context: BrowserContext, page: Page, demo: Demo
) -> None:
    home = f"{demo.proxy_url}/"
    await page.goto(home)
    await log_in(page, demo, ADA)
    await expect_whoami(page, home, ADA)
    await page.locator("#sign-out").click()
    await expect_login_form(page, demo)

    # Chromium tells DevTools why it did not restore a page from the back/forward cache (which this
    # browser has on, as people's browsers do; see support/chromium.py).
    cdp = await context.new_cdp_session(page)
    await cdp.send("Page.enable")
    not_restored: asyncio.Queue[list[str]] = asyncio.Queue()
    cdp.on(
        "Page.backForwardCacheNotUsed",
        lambda event: not_restored.put_nowait(
            [entry["reason"] for entry in event["notRestoredExplanations"]]
        ),
    )
    answers: list[Response] = []

    def record(answer: Response) -> None:
        answers.append(answer)

    page.on("response", record)
    # "commit", not "load": a page restored from the back/forward cache never fires `load` again.
    navigation = await page.go_back(wait_until="commit")
    # What Chromium really does: it does not restore the signed-in page, because its main resource is
    # `Cache-Control: no-store` (and it used a websocket, which rules out no-store pages too), and
    # `no-store` also keeps it out of the HTTP cache. So "back" is a new request for `/`, which the
    # proxy, without a session, answers by starting a login: nothing protected is shown.
    assert navigation is not None, "the signed-in page came back from the back/forward cache after sign-out"
    await expect_login_form(page, demo)
    page.remove_listener("response", record)
    reasons = await asyncio.wait_for(not_restored.get(), timeout=5)
    assert any(re.search("CacheControlNoStore|CCNS", reason) for reason in reasons), reasons
    home_answers = [answer for answer in answers if answer.url == home]
    assert [answer.status for answer in home_answers] == [302], "`/` was shown without asking the proxy"
    assert home_answers[0].headers["location"].startswith("/oauth2/start?")
    await expect(page.locator("span#email")).to_have_count(0)


async def test_central_revocation_reaches_the_browser(
    context: BrowserContext, page: Page, demo: Demo, quick_proxy: str
) -> None:
    home = f"{quick_proxy}/"
    await page.goto(home)
    await log_in(page, demo, ADA)
    await expect_whoami(page, home, ADA)

    # CentralAuth's admin ends every session of the user; the proxy notices on its next check.
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{demo.idp_url}/_devidp/users/{ADA}/logout") as answer:
            assert answer.status < 300, await answer.text()
    await asyncio.sleep(QUICK_TTL + 0.2)
    await page.reload()
    await expect_login_form(page, demo)
    assert not await has_session(context, demo, home)


@pytest.mark.parametrize(("device", "suffix"), [(DESKTOP, ""), (PHONE, "-phone")], ids=["desktop", "phone"])
async def test_screenshots_of_proxy_pages(
    chromium: Browser, demo: Demo, device: dict[str, Any], suffix: str
) -> None:
    context = await new_context(chromium, **device)
    page = await context.new_page()
    width = device["viewport"]["width"]
    try:
        await page.goto(f"{demo.proxy_url}/oauth2/sign_in")
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        await expect(page.get_by_role("link", name="Sign in")).to_be_visible()
        await shoot(page, f"proxy-sign-in{suffix}")
        assert await page.evaluate("document.documentElement.scrollWidth") <= width, "scrolls sideways"

        # A callback without the state of a login this browser started: the "sign-in expired" page.
        await page.goto(f"{demo.proxy_url}/oauth2/callback")
        await expect(page.get_by_role("heading", name="Sign-in expired")).to_be_visible()
        await expect(page.get_by_text("This sign-in has expired")).to_be_visible()
        await expect(page.get_by_role("link", name="Sign in again")).to_be_visible()
        await shoot(page, f"proxy-error-sign-in-expired{suffix}")
        assert await page.evaluate("document.documentElement.scrollWidth") <= width, "scrolls sideways"
    finally:
        await context.close()


async def test_screenshots_of_login_whoami_and_sign_out_confirmation(
    context: BrowserContext, page: Page, demo: Demo
) -> None:
    home = f"{demo.proxy_url}/"
    await page.goto(home)
    await expect_login_form(page, demo)
    await shoot(page, "centralauth-login")
    await log_in(page, demo, ADA)
    await expect_whoami(page, home, ADA)
    await expect(page.locator("#ws-status")).to_have_text(WS_OK)
    await shoot(page, "whoami")

    # A link to sign-out on another site: Chromium sends `Sec-Fetch-Site: cross-site`, so the proxy must
    # ask before signing out. The other site is served by Playwright itself, no network involved.
    sign_out = f"{demo.proxy_url}/oauth2/sign_out"

    async def elsewhere(route: Route) -> None:
        link = f'<a href="{sign_out}">sign out of the demo</a>'
        await route.fulfill(content_type="text/html", body=f"<!doctype html><title>elsewhere</title>{link}")

    await page.route("http://elsewhere.example/", elsewhere)
    await page.goto("http://elsewhere.example/")
    await page.get_by_role("link", name="sign out of the demo").click()
    await expect(page).to_have_url(sign_out)
    await expect(page.get_by_role("heading", name="Sign out")).to_be_visible()
    assert await has_session(context, demo, home), "signed out without asking"
    await shoot(page, "proxy-sign-out-confirmation")

    # Confirming is a same-origin POST with the page's CSRF token: it signs out.
    await page.get_by_role("button", name="Sign out").click()
    await expect_login_form(page, demo)
    assert not await has_session(context, demo, home)

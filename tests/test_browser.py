"""A real browser against the running demo: headless Chromium, the fake CentralAuth, the proxy, whoami.

What the HTTP-level tests assume about browsers, checked with one: redirects through the login form
and back to a deep link, cookies set on a redirect and sent on the next request, two tabs with two
login transactions, the websocket through the proxy, `Sec-Fetch-Site` on sign-out, what the back button
does after sign-out, the ways on from the proxy's own pages (access denied, an outage at the callback,
signed out), and every page's layout at desktop width and on a 390 px phone.

Each test gets its own demo from `start_demo()` on free loopback ports and its own browser context (a
fresh profile) in a Chromium shared by the module (see support/chromium.py: Debian's `/usr/bin/chromium`
under Playwright, a hard requirement — a missing browser fails these tests, it never skips them).
Screenshots of the pages people see go to `tests/artifacts/` (ignored by git), for a human to look at.
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

ADA, GRACE = DEMO_USERS
SCREENSHOTS = Path(__file__).resolve().parent / "artifacts"
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


async def expect_signed_out(page: Page, demo: Demo) -> None:
    """The proxy's "You are signed out" page, where a sign-out without `rd` ends."""
    await expect(page).to_have_url(re.compile("^" + re.escape(f"{demo.proxy_url}/oauth2/signed_out")))
    await expect(page.get_by_role("heading", name="You are signed out")).to_be_visible()
    await expect(page.get_by_role("link", name="Sign in again")).to_be_visible()


async def has_session(context: BrowserContext, demo: Demo, url: str) -> bool:
    """Whether the browser holds the proxy's session cookie for `url`."""
    cookies = await context.cookies(url)
    return any(cookie["name"] == demo.config.session.cookie_name for cookie in cookies)


async def shoot(page: Page, name: str) -> Path:
    """A full-page PNG in tests/artifacts/, checked to exist and to show more than a blank page."""
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
    # Without `rd` the sign-out ends on a page that says so, rather than on `/` and a new login at once.
    await expect_signed_out(page, demo)
    assert not await has_session(context, demo, home)
    await page.goto(home)
    await expect_login_form(page, demo)
    await page.go_back()
    await expect_signed_out(page, demo)
    await page.get_by_role("link", name="Sign in again").click()
    await log_in(page, demo, ADA)
    await expect_whoami(page, home, ADA)


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
    await expect_signed_out(page, demo)

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
    await expect_signed_out(page, demo)
    assert not await has_session(context, demo, home)


# --- every page the proxy shows, at desktop width and on a phone ----------------------------------------

# A button pair must not touch: at least this many CSS pixels between them, side by side or stacked.
MIN_BUTTON_GAP = 8
# Every page's card keeps at least this margin to the screen's edges on a phone.
MIN_MARGIN = 8
# The address of the every-page test's blocked user, and of the long-address phone test.
BLOCKED = "blocked@example.com"
LONG_EMAIL = "margaret.hamilton.apollo.guidance@computer-history.example.com"


@async_fixture
async def dead_upstream_proxy(demo: Demo) -> AsyncIterator[str]:
    """A proxy like the demo's, in front of an upstream address where nothing listens."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = demo.config.model_dump()
    settings["server"].update(listen=f"127.0.0.1:{port}", public_url=url)
    settings["upstreams"][0]["url"] = f"http://127.0.0.1:{free_port()}"
    runner = make_runner(build_app(Config(**settings)))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield url
    await runner.cleanup()


async def idp_admin(demo: Demo, method: str, path: str, body: dict[str, Any]) -> None:
    """One call to the fake CentralAuth's test-control API (block a user, queue a fault)."""
    async with aiohttp.ClientSession() as http:
        async with http.request(method, f"{demo.idp_url}/_devidp{path}", json=body) as answer:
            assert answer.status < 300, await answer.text()


async def fits(page: Page) -> None:
    """Nothing on the page is wider than the window: no sideways scrolling, nothing cut off."""
    scroll, inner = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert scroll <= inner, f"{page.url}: {scroll} px wide in a {inner} px window"


async def check_page(
    page: Page, name: str, heading: str, links: tuple[str, ...] = (), buttons: tuple[str, ...] = ()
) -> None:
    """The page has `heading` and every control visible, fits the window, and its card keeps a margin;
    then its screenshot."""
    await expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
    for label in links:
        await expect(page.get_by_role("link", name=label, exact=True)).to_be_visible()
    for label in buttons:
        await expect(page.get_by_role("button", name=label, exact=True)).to_be_visible()
    await fits(page)
    card = await page.locator("main").bounding_box()
    width = page.viewport_size["width"] if page.viewport_size else 0
    assert card and card["x"] >= MIN_MARGIN and card["x"] + card["width"] <= width - MIN_MARGIN, card
    await shoot(page, name)


async def follow_from_elsewhere(page: Page, url: str) -> None:
    """Follow a link to `url` on another site (served by Playwright itself): `Sec-Fetch-Site: cross-site`."""

    async def elsewhere(route: Route) -> None:
        body = f'<!doctype html><title>elsewhere</title><a href="{url}">go</a>'
        await route.fulfill(content_type="text/html", body=body)

    await page.route("http://elsewhere.example/", elsewhere)
    await page.goto("http://elsewhere.example/")
    await page.get_by_role("link", name="go").click()
    await expect(page).to_have_url(url)


async def assert_apart(page: Page, *controls: str) -> None:
    """Two controls (CSS selectors) of equal width, with room between them."""
    first, second = [await page.locator(selector).bounding_box() for selector in controls]
    assert first and second
    assert abs(first["width"] - second["width"]) < 1, (first, second)
    side_by_side = abs(first["y"] - second["y"]) < 1
    if side_by_side:
        gap = second["x"] - (first["x"] + first["width"])
    else:
        gap = second["y"] - (first["y"] + first["height"])
    assert gap >= MIN_BUTTON_GAP, (first, second)


@pytest.mark.parametrize(("device", "suffix"), [(DESKTOP, ""), (PHONE, "-phone")], ids=["desktop", "phone"])
async def test_every_proxy_page_fits_and_offers_its_controls(
    chromium: Browser, demo: Demo, dead_upstream_proxy: str, device: dict[str, Any], suffix: str
) -> None:
    context = await new_context(chromium, **device)
    page = await context.new_page()
    proxy = demo.proxy_url
    try:
        await page.goto(f"{proxy}/oauth2/sign_in")
        await check_page(page, f"proxy-sign-in{suffix}", "Sign in", links=("Sign in",))

        await page.goto(f"{proxy}/oauth2/signed_out")
        await check_page(page, f"proxy-signed-out{suffix}", "You are signed out", links=("Sign in again",))

        # A callback without the state of a login this browser started.
        await page.goto(f"{proxy}/oauth2/callback")
        await check_page(page, f"proxy-sign-in-expired{suffix}", "Sign-in expired", links=("Sign in again",))

        # CentralAuth sent the user back with an error.
        await page.goto(f"{proxy}/oauth2/callback?error=access_denied&error_description=nope")
        await check_page(page, f"proxy-sign-in-failed{suffix}", "Sign-in failed", links=("Sign in again",))

        # Signed in, then sent to the sign-out by another site: the confirmation.
        await page.goto(f"{proxy}/")
        await log_in(page, demo, ADA)
        await expect_whoami(page, f"{proxy}/", ADA)
        await follow_from_elsewhere(page, f"{proxy}/oauth2/sign_out")
        await check_page(
            page,
            f"proxy-sign-out-confirmation{suffix}",
            "Sign out",
            links=("Stay signed in",),
            buttons=("Sign out",),
        )
        await expect(page.get_by_text("ends your CentralAuth session")).to_be_visible()
        await assert_apart(page, "form.actions button", "form.actions a")
        await page.get_by_role("button", name="Sign out").click()
        await expect_signed_out(page, demo)

        # A user CentralAuth has blocked is refused at the callback.
        await idp_admin(demo, "PATCH", f"/users/{BLOCKED}", {"blocked": True})
        await page.goto(f"{proxy}/")
        await log_in(page, demo, BLOCKED)
        await check_page(
            page, f"proxy-access-denied{suffix}", "Access denied", links=("Use another account", "Sign out")
        )
        await expect(page.get_by_text("Your account is blocked at CentralAuth.")).to_be_visible()
        await assert_apart(page, ".actions a:first-child", ".actions a:last-child")

        # CentralAuth fails the code exchange of the next login.
        await idp_admin(demo, "POST", "/faults", {"endpoint": "verify", "status": 503})
        await page.goto(f"{proxy}/")
        await log_in(page, demo, ADA)
        await check_page(
            page,
            f"proxy-centralauth-unavailable{suffix}",
            "Sign-in service unavailable",
            links=("Try again",),
        )

        # Signed in at a proxy whose application is down.
        await page.goto(f"{dead_upstream_proxy}/")
        await log_in(page, demo, ADA)
        await check_page(
            page, f"proxy-upstream-down{suffix}", "The application is not answering", links=("Try again",)
        )
    finally:
        await context.close()


async def test_the_demo_pages_fit_a_phone(chromium: Browser, demo: Demo) -> None:
    context = await new_context(chromium, **PHONE)
    page = await context.new_page()
    home = f"{demo.proxy_url}/"
    try:
        await page.goto(home)
        await expect_login_form(page, demo)
        await expect(page.locator("#fake-notice")).to_contain_text("Any e-mail address signs in")
        await check_page(page, "centralauth-login-phone", "Sign in", buttons=("Continue",))

        await log_in(page, demo, LONG_EMAIL)
        await expect_whoami(page, home, LONG_EMAIL)
        await expect(page.locator("#ws-status")).to_have_text(WS_OK)
        await fits(page)
        # The heading wraps its long address instead of being cut off.
        clipped = await page.evaluate(
            "(h) => h.scrollWidth > h.clientWidth", await page.locator("h1").element_handle()
        )
        assert not clipped
        # Header names break only at their hyphens: each hyphen-separated part sits on one line.
        broken = await page.evaluate(
            """() => [...document.querySelectorAll("th")].flatMap((th) => {
                const text = th.firstChild, broken = [];
                let at = 0;
                for (const part of text.data.split("-")) {
                    const range = document.createRange();
                    range.setStart(text, at);
                    range.setEnd(text, at + part.length);
                    if (range.getClientRects().length > 1) broken.push(part);
                    at += part.length + 1;
                }
                return broken;
            })"""
        )
        assert broken == []
        await shoot(page, "whoami-phone")

        await page.get_by_role("link", name="Reports").click()
        await expect(page).to_have_url(f"{demo.proxy_url}/reports")
        await expect(page.get_by_role("heading", name="Reports")).to_be_visible()
        await fits(page)
        await shoot(page, "whoami-reports-phone")
    finally:
        await context.close()


# --- the ways on, followed with clicks ---------------------------------------------------------------


async def test_access_denied_use_another_account(context: BrowserContext, page: Page, demo: Demo) -> None:
    await idp_admin(demo, "PATCH", f"/users/{BLOCKED}", {"blocked": True})
    reports = f"{demo.proxy_url}/reports"
    await page.goto(reports)
    await log_in(page, demo, BLOCKED)
    await expect(page.get_by_role("heading", name="Access denied")).to_be_visible()
    await expect(page.get_by_text("you are not signed in here")).to_be_visible()
    assert not await has_session(context, demo, reports)

    await page.get_by_role("link", name="Use another account").click()
    # Signed out, then a new login, to the page the refused one was for.
    await log_in(page, demo, GRACE)
    await expect(page).to_have_url(reports)
    await expect(page.locator("span#email")).to_have_text(GRACE)


async def test_access_denied_sign_out(
    context: BrowserContext, page: Page, demo: Demo, quick_proxy: str
) -> None:
    home = f"{quick_proxy}/"
    await page.goto(home)
    await log_in(page, demo, ADA)
    await expect_whoami(page, home, ADA)
    # CentralAuth's admin blocks the signed-in user; the proxy notices on its next check.
    await idp_admin(demo, "PATCH", f"/users/{ADA}", {"blocked": True})
    await asyncio.sleep(QUICK_TTL + 0.2)
    await page.reload()
    await expect(page.get_by_role("heading", name="Access denied")).to_be_visible()
    await expect(page.get_by_text("You are signed in, but")).to_be_visible()
    await page.get_by_role("link", name="Sign out", exact=True).click()
    await expect(page).to_have_url(f"{quick_proxy}/oauth2/signed_out")
    await expect(page.get_by_role("heading", name="You are signed out")).to_be_visible()
    assert not await has_session(context, demo, home)


async def test_outage_at_the_callback_try_again(context: BrowserContext, page: Page, demo: Demo) -> None:
    reports = f"{demo.proxy_url}/reports"
    await idp_admin(demo, "POST", "/faults", {"endpoint": "verify", "status": 503})
    await page.goto(reports)
    await log_in(page, demo, ADA)
    await expect(page.get_by_role("heading", name="Sign-in service unavailable")).to_be_visible()
    await page.get_by_role("link", name="Try again").click()
    await log_in(page, demo, ADA)
    await expect(page).to_have_url(reports)
    await expect(page.locator("span#email")).to_have_text(ADA)


async def test_signed_out_sign_in_again_keeps_rd(context: BrowserContext, page: Page, demo: Demo) -> None:
    home = f"{demo.proxy_url}/"
    await page.goto(home)
    await log_in(page, demo, ADA)
    await expect_whoami(page, home, ADA)
    # An app that wants the signed-out page and a way back to one of its pages sends this `rd`.
    await page.goto(f"{demo.proxy_url}/oauth2/sign_out?rd=%2Foauth2%2Fsigned_out%3Frd%3D%252Freports")
    await expect_signed_out(page, demo)
    assert not await has_session(context, demo, home)
    await page.get_by_role("link", name="Sign in again").click()
    await log_in(page, demo, ADA)
    await expect(page).to_have_url(f"{demo.proxy_url}/reports")

"""A real Django app behind `authproxy serve`, set up exactly as README.md's Quickstart tries it locally.

The proxy's config is the README's own `local.toml` block, read from README.md at test time, with only
its three loopback ports swapped for free ones; its secret files are written next to it in a tmp
directory the way the Quickstart's shell lines make them. The fake CentralAuth runs as `authproxy devidp`
and the proxy as `authproxy serve -c local.toml`, both real processes, as a person following the README
would start them. The app is tests/support/django_app (Django from PyPI, `runserver --noreload`): it
takes the user from `X-Forwarded-Email` with Django's RemoteUserMiddleware/RemoteUserBackend and keeps
Django's default CSRF protection.

Headless Chromium then signs in at the fake's form, lands on Django's greeting, posts Django's CSRF
form, and signs out with the app's own link to `/oauth2/sign_out`. That POST succeeds only because the
Quickstart leaves `preserve_host` at its default (true): Django compares the browser's `Origin` with
the `Host` it receives. The negative control sets `preserve_host = false` and sees Django's CSRF check
refuse the very same POST, so the first test is known to be able to fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
from support.chromium import expect, launch, new_context
from support.harness import free_port
from support.listening import wait_until_listening

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page, Request

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DJANGO_PROJECT = Path(__file__).resolve().parent / "support" / "django_app"
# The Quickstart's command; the venv's own script, since the venv's bin/ need not be on PATH.
AUTHPROXY = Path(sys.executable).with_name("authproxy")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# The Quickstart's addresses in `local.toml` and on the `devidp` line: proxy, fake CentralAuth, app.
QUICKSTART_PROXY = "127.0.0.1:4180"
QUICKSTART_IDP = "127.0.0.1:9000"
QUICKSTART_APP = "127.0.0.1:8080"
CLIENT_ID = "local-test"
ADA = "ada@example.com"
GRACE = "grace@example.com"
# Each server is up in about a second; a loaded CI box gets ten times that before the test gives up.
START_WITHIN = 15.0

# One Chromium, one fake CentralAuth and one Django serve both tests; each test starts its own proxy
# and browser context. Playwright's browser is bound to the loop that launched it, hence one loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")
async_fixture = pytest_asyncio.fixture(scope="module", loop_scope="module")


@dataclass
class Server:
    """A child process listening on `url`, in its own process group, with stdout and stderr in `log`."""

    name: str
    process: asyncio.subprocess.Process
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


async def run(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command to completion, as the Quickstart's one-shot shell lines do; its stdout."""
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), START_WITHIN)
    assert process.returncode == 0, f"{argv} exited with {process.returncode}:\n{out.decode()}{err.decode()}"
    return out.decode()


@contextlib.asynccontextmanager
async def serving(
    name: str, argv: list[str], port: int, *, cwd: Path, env: dict[str, str] | None = None
) -> AsyncIterator[Server]:
    """Start a server process, wait for its port, and kill its whole process group on the way out.

    A new session makes the server a group leader, so whatever it forks (authproxy's workers, a thread
    of runserver's that outlives it) goes down with it instead of lingering on a test port.
    """
    log = cwd / f"{name}.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=env, stdout=sink, stderr=asyncio.subprocess.STDOUT, start_new_session=True
        )
    server = Server(name, process, f"http://127.0.0.1:{port}", log)
    try:
        await wait_until_listening(name, process, port, server.output, START_WITHIN)
        yield server
    finally:
        await stop(process)


async def stop(process: asyncio.subprocess.Process) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            continue
        return


def quickstart_local_toml() -> str:
    """The `local.toml` block of README.md's "Trying it against the fake CentralAuth first", verbatim."""
    found = re.search(r"^`local\.toml`:\s*\n+```toml\n(.*?)^```", README.read_text(), re.M | re.S)
    assert found, 'README.md no longer shows a `local.toml` block after a "`local.toml`:" line'
    return found.group(1)


def local_toml(proxy_port: int, idp_port: int, app_port: int, upstream_extra: str = "") -> str:
    """The README's `local.toml` with its ports moved to free ones and, optionally, a line added to its
    `[[upstreams]]` table (the last table, so appending puts it there)."""
    text = quickstart_local_toml()
    for address, port in (
        (QUICKSTART_PROXY, proxy_port),
        (QUICKSTART_IDP, idp_port),
        (QUICKSTART_APP, app_port),
    ):
        assert address in text, f"README's local.toml no longer mentions {address}; update this test"
        text = text.replace(address, f"127.0.0.1:{port}")
    # What this test proves rests on the Quickstart relying on the default, not on a setting.
    assert "preserve_host" not in quickstart_local_toml()
    assert text.rstrip().splitlines()[-1].startswith("url = "), "[[upstreams]] is no longer last"
    return text + upstream_extra


@async_fixture
async def chromium() -> AsyncIterator[Browser]:
    async with launch() as browser:
        yield browser


@async_fixture
async def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Quickstart's "empty directory", with the two secret files its first shell lines write."""
    directory = tmp_path_factory.mktemp("quickstart")
    # python3 -c 'import secrets; print(secrets.token_hex(32))' > idp.secret
    (directory / "idp.secret").write_text(secrets.token_hex(32) + "\n")
    (directory / "cookie.secret").write_text(await run([str(AUTHPROXY), "gen-secret"], cwd=directory))
    return directory


@async_fixture
async def idp(workdir: Path) -> AsyncIterator[Server]:
    port = free_port()
    client_secret = (workdir / "idp.secret").read_text().strip()
    argv = [str(AUTHPROXY), "devidp", "--listen", f"127.0.0.1:{port}", "--client-id", CLIENT_ID]
    async with serving("devidp", [*argv, "--client-secret", client_secret], port, cwd=workdir) as server:
        yield server


@async_fixture
async def django_app(workdir: Path) -> AsyncIterator[Server]:
    """tests/support/django_app under `runserver --noreload`, its SQLite database migrated first."""
    env = {
        **os.environ,
        "PYTHONPATH": str(DJANGO_PROJECT),
        "DJANGO_SETTINGS_MODULE": "notesite.settings",
        "NOTESITE_DATABASE": str(workdir / "notesite.sqlite3"),
        "PYTHONUNBUFFERED": "1",
    }
    django = [sys.executable, "-m", "django"]
    await run([*django, "migrate", "--verbosity", "0"], cwd=workdir, env=env)
    port = free_port()
    argv = [*django, "runserver", "--noreload", f"127.0.0.1:{port}"]
    async with serving("django", argv, port, cwd=workdir, env=env) as server:
        yield server


@contextlib.asynccontextmanager
async def authproxy_serve(
    workdir: Path, idp: Server, app: Server, upstream_extra: str = ""
) -> AsyncIterator[Server]:
    """`authproxy serve -c local.toml` in the Quickstart's directory, so its relative secret paths resolve."""
    port = free_port()
    idp_port = int(idp.url.rsplit(":", 1)[1])
    app_port = int(app.url.rsplit(":", 1)[1])
    config = workdir / f"local-{port}.toml"
    config.write_text(local_toml(port, idp_port, app_port, upstream_extra))
    assert "configuration is valid" in await run(
        [str(AUTHPROXY), "check-config", "-c", config.name], cwd=workdir
    )
    async with serving(
        f"authproxy-{port}", [str(AUTHPROXY), "serve", "-c", config.name], port, cwd=workdir
    ) as server:
        yield server


@contextlib.asynccontextmanager
async def browser_context(chromium: Browser) -> AsyncIterator[BrowserContext]:
    context = await new_context(chromium, viewport={"width": 1100, "height": 700})
    try:
        yield context
    finally:
        await context.close()


async def expect_login_form(page: Page, idp: Server) -> None:
    await expect(page).to_have_url(re.compile("^" + re.escape(f"{idp.url}/login?")))
    await expect(page.locator("input#email")).to_be_editable()


async def sign_in(page: Page, proxy: Server, idp: Server, email: str) -> None:
    """Open the proxy, get sent to the fake's form, sign in, and land on Django's greeting for `email`."""
    await page.goto(f"{proxy.url}/")
    await expect_login_form(page, idp)
    await page.locator("input#email").fill(email)
    await page.get_by_role("button", name="Continue").click()
    await expect(page).to_have_url(f"{proxy.url}/")
    await expect(page.locator("h1#hello")).to_have_text(f"Hello {email}")


async def post_note(page: Page, proxy: Server, note: str) -> tuple[int, str]:
    """Submit Django's note form as a person would; the status and text of the page the POST returned."""
    await page.locator("input#note").fill(note)

    def is_the_post(request: Request) -> bool:
        return request.method == "POST" and request.url == f"{proxy.url}/note"

    async with page.expect_request(is_the_post) as posted:
        await page.get_by_role("button", name="Save note").click()
    response = await (await posted.value).response()
    assert response is not None
    await page.wait_for_load_state()
    return response.status, await response.text()


async def sign_out_with_the_apps_link(page: Page, proxy: Server, idp: Server) -> None:
    """Click Django's own "Sign out" link to `/oauth2/sign_out` and follow the proxy's sign-out flow.

    Chromium sends `Sec-Fetch-Site: same-origin`, so the proxy signs out at once (302); should it ask
    for confirmation instead (200, a form), its button is pressed as a person would. Either way the
    browser ends on the proxy's signed-out page or, when that sends it on to "/", the fake's login form.
    """
    async with page.expect_response(f"{proxy.url}/oauth2/sign_out") as answered:
        await page.get_by_role("link", name="Sign out").click()
    response = await answered.value
    assert response.status in (200, 302), f"sign-out answered {response.status}: {await response.text()}"
    if response.status == 200:
        await page.get_by_role("button", name="Sign out").click()
    after = re.escape(f"{proxy.url}/oauth2/signed_out") + "|" + re.escape(f"{idp.url}/login?")
    await expect(page).to_have_url(re.compile(f"^({after})"))


def save_screenshot(name: str, image: bytes) -> Path:
    """Into tests/artifacts/, which ignores itself in git (its own `.gitignore` of `*`)."""
    ARTIFACTS.mkdir(exist_ok=True)
    ignore = ARTIFACTS / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    path = ARTIFACTS / f"{name}.png"
    part = path.with_name(f".{name}.{os.getpid()}.png")
    part.write_bytes(image)
    part.replace(path)  # whole or not at all, should another run write the same name meanwhile
    return path


async def test_django_behind_the_quickstart_config_takes_a_csrf_post_and_signs_out(
    chromium: Browser, workdir: Path, idp: Server, django_app: Server
) -> None:
    async with authproxy_serve(workdir, idp, django_app) as proxy, browser_context(chromium) as context:
        page = await context.new_page()
        await sign_in(page, proxy, idp, ADA)
        # Django's CSRF cookie was set for the proxy's origin as the browser sees it.
        assert any(cookie["name"] == "csrftoken" for cookie in await context.cookies(proxy.url))
        save_screenshot("django-home", await page.screenshot(full_page=True))

        status, body = await post_note(page, proxy, "behind the proxy")
        assert status == 200, f"Django refused the POST ({status}):\n{body[:2000]}\n{django_app.output()}"
        await expect(page.locator("#saved")).to_have_text("Saved: behind the proxy")
        await expect(page.locator("#notes li")).to_have_text(["behind the proxy"])
        save_screenshot("django-note", await page.screenshot(full_page=True))

        await sign_out_with_the_apps_link(page, proxy, idp)
        assert not any(cookie["name"] == "_authproxy" for cookie in await context.cookies(proxy.url))
        await page.goto(f"{proxy.url}/")
        await expect_login_form(page, idp)


async def test_without_preserve_host_django_refuses_the_same_post(
    chromium: Browser, workdir: Path, idp: Server, django_app: Server
) -> None:
    """The control: with the upstream's own Host, Django's Origin check fails, so the test above can too."""
    async with (
        authproxy_serve(workdir, idp, django_app, "preserve_host = false\n") as proxy,
        browser_context(chromium) as context,
    ):
        page = await context.new_page()
        # GETs still work: Django's ALLOWED_HOSTS takes 127.0.0.1 on any port.
        await sign_in(page, proxy, idp, GRACE)
        status, body = await post_note(page, proxy, "refused")
        assert status == 403, f"expected Django's CSRF refusal, got {status}:\n{body[:2000]}"
        assert "CSRF verification failed" in body
        # Django's reason, which its csrf logger writes to runserver's stderr (see the project's LOGGING).
        reason = f"Origin checking failed - {proxy.url} does not match any trusted origins."
        assert reason in django_app.output()

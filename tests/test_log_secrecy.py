"""No token, code, verifier, secret or cookie value ever reaches a log line, across a whole run."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog
from conftest import CLIENT_SECRET, DevIdp, ProxyFactory
from support.harness import COOKIE_SECRET, Browser
from yarl import URL

from authproxy import logs
from authproxy.runtime import LIVE


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()  # the JSON logger configured below writes to this test's captured stream


async def test_a_whole_run_logs_no_secrets(
    proxy_factory: ProxyFactory, browser: Browser, devidp: DevIdp, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("json", "debug")
    proxy = await proxy_factory(logging={"format": "json", "level": "debug"})
    runtime = proxy.app[LIVE].runtime
    secrets: dict[str, str] = {"client secret": CLIENT_SECRET, "cookie secret": COOKIE_SECRET}

    # A login, step by step, keeping every secret that crosses the wire.
    async with browser.http.get(f"{proxy.url}/reports?q=1") as response:
        form = response.url
    state = form.query["state"]
    transaction_cookie = browser.cookie(runtime.transactions.name(state))
    assert transaction_cookie
    transaction = runtime.transactions.open(state, {runtime.transactions.name(state): transaction_cookie}, 0)
    async with browser.http.post(form, data={"email": "ada@example.com"}, allow_redirects=False) as response:
        callback = URL(response.headers["Location"])
    async with browser.http.get(callback) as response:
        assert response.status == 200
    session_cookie = browser.cookie(runtime.cookie.name)
    assert session_cookie
    session = await runtime.store.load(session_cookie)
    assert session is not None
    secrets |= {
        "state": state,
        "code": callback.query["code"],
        "transaction cookie": transaction_cookie,
        "session cookie": session_cookie,
        "access token": session.access_token,
    }
    if transaction is not None:
        secrets["verifier"] = transaction.verifier

    # Everyday traffic, failures and a sign-out, so every log path gets its chance to leak.
    for path in ("/a", "/b?token=x", "/oauth2/userinfo", "/oauth2/auth"):
        async with browser.http.get(proxy.url + path) as response:
            assert response.status in (200, 202)
    await devidp.fault("userinfo", status=503, count=1)
    async with browser.http.get(f"{proxy.url}/outage-{1}", headers={"Cache-Control": "no"}) as response:
        pass
    async with browser.http.get(f"{proxy.url}/oauth2/callback?error=x&error_description=y&state={state}"):
        pass
    async with browser.http.get(
        f"{proxy.url}/oauth2/sign_out", headers={"Sec-Fetch-Site": "same-origin"}, allow_redirects=False
    ) as response:
        assert response.status == 302

    captured = capsys.readouterr()
    output = captured.out + captured.err
    lines = [line for line in output.splitlines() if line.strip()]
    assert any('"event":"access"' in line for line in lines)
    assert any('"login.success"' in line for line in lines)
    assert any('"logout"' in line for line in lines)
    for name, value in secrets.items():
        assert value not in output, f"the {name} appears in the logs"
    for line in lines:
        if line.startswith("{"):
            json.loads(line)  # every JSON line is whole

"""Logins that arrive without the relying party's PKCE binding: direct authentication and autologin.

Covers `authenticate_direct` (Basic, JSON body, login-attempt object, the login link exposed to
tests, a code with no PKCE binding); the fake's autologin model (one extra code per other non-wildcard
whitelisted origin, same state, same session); and the exchange of a code issued without a challenge
(the verifier, even `undefined`, is ignored).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest
from conftest import APP, BROWSER_IP, BROWSER_UA, CALLBACK, OTHER_APP, WILDCARD, DevIdp, basic
from yarl import URL

ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


async def start_direct(devidp: DevIdp, **body: Any) -> Any:
    payload = {
        "email": "ivy@example.com",
        "redirect_uri": f"{CALLBACK}?return_to=%2Finbox",
        "state": "direct-1",
    }
    payload.update(body)
    headers = {"Authorization": basic(), "User-Agent": "node"}
    return await devidp.call("POST", "/api/v1/authenticate_direct", json=payload, headers=headers)


async def follow(devidp: DevIdp, link: str) -> Any:
    headers = {"User-Agent": BROWSER_UA, "X-Forwarded-For": BROWSER_IP}
    async with devidp.http.get(link, headers=headers, allow_redirects=False) as response:
        return response.status, response.headers.get("Location", ""), await response.text()


async def test_direct_authentication_returns_a_login_attempt(devidp: DevIdp) -> None:
    reply = await start_direct(devidp)
    assert reply.status == 200, reply.text
    attempt = reply.json()
    assert set(attempt) == {"loginAttemptId", "token", "sentence", "allowedDate"}
    assert ISO_MS.fullmatch(attempt["allowedDate"])
    assert len(attempt["sentence"].split()) == 3
    [link] = await devidp.control("GET", "/login-links")
    assert link["loginAttemptId"] == attempt["loginAttemptId"]
    secret = URL(link["link"]).query["token"]
    # The reply carries only a hash of the link's secret.
    assert attempt["token"] == hashlib.sha256(secret.encode()).hexdigest()


@pytest.mark.parametrize("verifier", [None, "undefined", "anything-at-all-really-anything-at-all"])
async def test_following_the_link_completes_a_login_without_pkce_binding(
    devidp: DevIdp, verifier: str | None
) -> None:
    await start_direct(devidp)
    [link] = await devidp.control("GET", "/login-links")
    status, location, _ = await follow(devidp, link["link"])
    assert status == 302
    callback = URL(location)
    assert location.startswith(f"{CALLBACK}?return_to=%2Finbox&code=")
    assert callback.query["state"] == "direct-1"
    reply = await devidp.verify(callback.query["code"], verifier=verifier)
    assert reply.status == 200, reply.text
    user = (await devidp.userinfo(reply.json()["access_token"])).json()
    assert user["email"] == "ivy@example.com"
    assert (await devidp.stats())["login"] == 1


async def test_a_link_works_once_and_expires_after_15_minutes(devidp: DevIdp) -> None:
    await start_direct(devidp)
    [link] = await devidp.control("GET", "/login-links")
    assert (await follow(devidp, link["link"]))[0] == 302
    status, _, page = await follow(devidp, link["link"])
    assert (status, "loginAttemptInvalid" in page) == (400, True)
    await devidp.advance(3600)
    await start_direct(devidp, email="jack@example.com")
    fresh = [
        item for item in await devidp.control("GET", "/login-links") if item["email"] == "jack@example.com"
    ]
    await devidp.advance(15 * 60)
    status, _, page = await follow(devidp, fresh[0]["link"])
    assert (status, "loginAttemptExpired" in page) == (400, True)


async def test_a_forged_link_token_is_refused(devidp: DevIdp) -> None:
    await start_direct(devidp)
    [link] = await devidp.control("GET", "/login-links")
    status, location, page = await follow(devidp, str(URL(link["link"]).with_query(token="forged")))
    assert (status, location, "loginAttemptMissing" in page) == (400, "", True)


async def test_repeated_attempts_back_off_with_429(devidp: DevIdp) -> None:
    first = (await start_direct(devidp)).json()
    too_soon = await start_direct(devidp)
    assert too_soon.status == 429
    assert too_soon.json()["errorCode"] == "tooManyRequests"
    await devidp.advance(10)
    second = (await start_direct(devidp)).json()
    assert second["allowedDate"] > first["allowedDate"]
    await devidp.advance(10)
    assert (await start_direct(devidp)).status == 429


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"email": None}, "missingFields"),
        ({"redirect_uri": ""}, "missingFields"),
        ({"state": ""}, "stateMissing"),
        ({"state": None}, "stateMissing"),
        ({"email": "not-an-email"}, "entityInvalid"),
        ({"email": 42}, "entityInvalid"),
        ({"redirect_uri": "https://evil.example.net/cb"}, "callbackUrlInvalid"),
    ],
)
async def test_direct_authentication_validates_its_body(
    devidp: DevIdp, body: dict[str, Any], code: str
) -> None:
    payload = {"email": "ivy@example.com", "redirect_uri": CALLBACK, "state": "s", **body}
    payload = {key: value for key, value in payload.items() if value is not None}
    reply = await devidp.call(
        "POST", "/api/v1/authenticate_direct", json=payload, headers={"Authorization": basic()}
    )
    assert reply.status == 400
    assert reply.json()["errorCode"] == code


async def test_direct_authentication_requires_credentials_and_json(devidp: DevIdp) -> None:
    no_auth = await devidp.call("POST", "/api/v1/authenticate_direct", json={"email": "a@example.com"})
    assert (no_auth.status, no_auth.json()["errorCode"]) == (403, "noPermission")
    not_json = await devidp.call(
        "POST", "/api/v1/authenticate_direct", data=b"{not json", headers={"Authorization": basic()}
    )
    assert (not_json.status, not_json.json()["errorCode"]) == (400, "entityInvalid")


@pytest.mark.parametrize("devidp", [{"auto_login": True}], indirect=True)
async def test_autologin_delivers_a_code_to_every_other_whitelisted_origin(devidp: DevIdp) -> None:
    login = await devidp.login(state="shared-state", redirect_uri=f"{CALLBACK}?return_to=%2Fhere")
    assert login.page is not None
    assert login.page.status == 200
    # The browser continues to the primary callback, with its own query and PKCE-bound code.
    assert str(login.callback).startswith(f"{CALLBACK}?return_to=%2Fhere&code=")
    [delivery] = await devidp.control("GET", "/autologin")
    assert delivery["origin"] == OTHER_APP
    delivered = URL(delivery["url"])
    assert str(delivered.with_query(None)) == f"{OTHER_APP}/api/auth/callback"
    assert dict(delivered.query) == {"code": delivered.query["code"], "state": "shared-state"}
    assert f'src="{delivery["url"]}"'.replace("&", "&amp;") in login.page.text
    assert WILDCARD.replace("*.", "") not in login.page.text

    primary = await devidp.verify(login.code, verifier=login.verifier)
    secondary = await devidp.verify(
        delivered.query["code"], redirect_uri=str(delivered), verifier="undefined"
    )
    assert primary.status == secondary.status == 200
    primary_claims = await devidp.userinfo(primary.json()["access_token"], domain=APP)
    secondary_claims = await devidp.userinfo(secondary.json()["access_token"], domain=OTHER_APP)
    assert primary_claims.json()["id"] == secondary_claims.json()["id"]
    [session] = await devidp.control("GET", "/sessions")
    assert session["origins"] == [APP, OTHER_APP]


@pytest.mark.parametrize("devidp", [{"auto_login": True, "whitelist": [APP, WILDCARD]}], indirect=True)
async def test_autologin_without_other_plain_origins_is_a_plain_redirect(devidp: DevIdp) -> None:
    login = await devidp.login()
    assert login.page is not None
    assert login.page.status == 302
    assert await devidp.control("GET", "/autologin") == []


async def test_without_autologin_other_origins_get_nothing(devidp: DevIdp) -> None:
    tokens = await devidp.sign_in()
    assert await devidp.control("GET", "/autologin") == []
    reply = await devidp.userinfo(tokens.access_token, domain=OTHER_APP)
    assert reply.json()["errorCode"] == "domainInvalid"

"""`POST /api/v1/userinfo`: the per-request session check, and the full life of a session.

Covers the User object's fields; Basic credentials; `domain` as origin or URL, whitelisted and
activated; a raw token body with any Content-Type, cache headers ignored, access or id token; the
order of the checks, expiry and inactivity on the fake clock, and hijack checks that kill the session;
and success updating the activity and `affirmationDate`.
"""

from __future__ import annotations

import hashlib
import re

import pytest
from conftest import (
    APP,
    BROWSER_IP,
    BROWSER_UA,
    CALLBACK,
    CLIENT_ID,
    CLIENT_SECRET,
    OTHER_APP,
    DevIdp,
    DevIdpFactory,
    Reply,
    basic,
)

from authproxy.devidp import AppRegistration
from authproxy.devidp.tokens import encrypt

ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def error_code(reply: Reply) -> str:
    assert reply.headers["Content-Type"].startswith("application/json"), reply.text
    code: str = reply.json()["errorCode"]
    return code


async def test_user_object_has_the_documented_fields(devidp: DevIdp) -> None:
    tokens = await devidp.sign_in(" Frank@Example.com")
    reply = await devidp.userinfo(tokens.access_token)
    assert reply.status == 200
    user = reply.json()
    assert set(user) == {
        "id",
        "email",
        "gravatar",
        "verified",
        "blocked",
        "organizationId",
        "created",
        "updated",
        "lastLogin",
        "affirmationDate",
    }
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", user["id"])
    assert user["email"] == "Frank@Example.com"
    digest = hashlib.sha256(b"frank@example.com").hexdigest()
    assert user["gravatar"] == f"https://www.gravatar.com/avatar/{digest}"
    assert user["verified"] is True
    assert user["blocked"] is False
    assert user["organizationId"] == CLIENT_ID
    for name in ("created", "updated", "lastLogin", "affirmationDate"):
        assert ISO_MS.fullmatch(user[name]), name


async def test_npm_style_call_is_recorded_as_sent(devidp: DevIdp) -> None:
    tokens = await devidp.sign_in()
    await devidp.userinfo(tokens.access_token)
    call = (await devidp.recorded())[-1]
    assert call["path"] == "/api/v1/userinfo"
    assert call["query"] == {"domain": APP}
    assert call["headers"]["auth-ip"] == BROWSER_IP
    assert call["headers"]["user-agent"] == BROWSER_UA
    assert call["headers"]["pragma"] == "no-cache"
    assert call["body"] == tokens.access_token


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ("{token}\n", {"Content-Type": "text/plain"}),
        ("  {token}\r\n", {"Content-Type": "text/plain; charset=utf-8"}),
        ("{token}", {"Content-Type": "application/octet-stream"}),
        ("{token}", {}),
        ("{id_token}", {"Content-Type": "text/plain"}),
    ],
)
async def test_raw_token_body_any_content_type_access_or_id_token(
    devidp: DevIdp, body: str, headers: dict[str, str]
) -> None:
    tokens = await devidp.sign_in()
    data = body.format(token=tokens.access_token, id_token=tokens.id_token).encode()
    all_headers = {"Authorization": basic(), "auth-ip": BROWSER_IP, "User-Agent": BROWSER_UA, **headers}
    # Without an explicit Content-Type aiohttp would add one; the PHP library sends none at all.
    reply = await devidp.call(
        "POST",
        "/api/v1/userinfo",
        params={"domain": APP},
        data=data,
        headers=all_headers,
        skip_auto_headers=[] if headers else ["Content-Type"],
    )
    assert reply.status == 200, reply.text
    recorded_headers = (await devidp.recorded())[-1]["headers"]
    assert recorded_headers.get("content-type") == headers.get("Content-Type")


@pytest.mark.parametrize(
    "domain", [APP, f"{APP}/", CALLBACK, f"{CALLBACK}?return_to=%2F", "HTTPS://App.Example.com:443"]
)
async def test_domain_may_be_an_origin_or_a_full_url(devidp: DevIdp, domain: str) -> None:
    tokens = await devidp.sign_in()
    assert (await devidp.userinfo(tokens.access_token, domain=domain)).status == 200


@pytest.mark.parametrize(
    "domain",
    [None, "", "app.example.com", "https://evil.example.net", OTHER_APP, "https://x.apps.example.com"],
)
async def test_domain_missing_foreign_or_not_activated_is_domain_invalid(
    devidp: DevIdp, domain: str | None
) -> None:
    tokens = await devidp.sign_in()
    reply = await devidp.userinfo(tokens.access_token, domain=domain)
    assert reply.status == 400
    assert error_code(reply) == "domainInvalid"


@pytest.mark.parametrize(
    ("auth", "status", "code"),
    [
        (None, 403, "noPermission"),
        (basic(CLIENT_ID, "0" * 64), 403, "noPermission"),
        (basic("another-org"), 404, "organizationIdMissing"),
        ("Basic ###", 403, "noPermission"),
    ],
)
async def test_client_credentials_are_required(
    devidp: DevIdp, auth: str | None, status: int, code: str
) -> None:
    tokens = await devidp.sign_in()
    headers = {"auth-ip": BROWSER_IP, "User-Agent": BROWSER_UA}
    if auth is not None:
        headers["Authorization"] = auth
    reply = await devidp.call(
        "POST", "/api/v1/userinfo", params={"domain": APP}, data=tokens.access_token.encode(), headers=headers
    )
    assert reply.status == status
    assert error_code(reply) == code


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b.c.d.e",
        "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2Q0JDLUhTNTEyIn0....",
        encrypt("f" * 64, {"sessionId": "x"}),
        encrypt(CLIENT_SECRET, {"no": "session"}),
        encrypt(CLIENT_SECRET, {"sessionId": 42}),
    ],
)
async def test_undecryptable_or_foreign_tokens_are_token_invalid(devidp: DevIdp, token: str) -> None:
    reply = await devidp.userinfo(token)
    assert reply.status == 400
    assert error_code(reply) == "tokenInvalid"


async def test_token_for_an_unknown_session_is_session_missing(devidp: DevIdp) -> None:
    reply = await devidp.userinfo(encrypt(CLIENT_SECRET, {"sessionId": "not-a-session", "iat": 0}))
    assert reply.status == 400
    assert error_code(reply) == "sessionMissing"


async def test_tokens_of_a_rotated_secret_stop_working(devidp: DevIdp) -> None:
    tokens = await devidp.sign_in()
    new_secret = "9" * 64
    await devidp.patch_settings(clientSecret=new_secret)
    reply = await devidp.userinfo(tokens.access_token, auth=basic(CLIENT_ID, new_secret))
    assert error_code(reply) == "tokenInvalid"


@pytest.mark.parametrize("devidp", [{"max_session_time": 300, "max_inactivity_time": 60}], indirect=True)
async def test_full_life_of_a_session(devidp: DevIdp) -> None:
    """login → verify → userinfo → activity keeps it alive → hard limit → new login → hijack → logout."""
    tokens = await devidp.sign_in("gina@example.com")
    assert (await devidp.userinfo(tokens.access_token)).status == 200
    # Activity within the inactivity window keeps the session alive...
    for _ in range(4):
        await devidp.advance(50)
        assert (await devidp.userinfo(tokens.access_token)).status == 200
    # ...until the max session time (300 s after creation) ends it anyway.
    await devidp.advance(101)
    assert error_code(await devidp.userinfo(tokens.access_token)) == "sessionExpired"

    tokens = await devidp.sign_in("gina@example.com")
    hijacked = await devidp.userinfo(tokens.access_token, ip="198.51.100.66")
    assert hijacked.status == 400
    assert error_code(hijacked) == "sessionInvalid"
    # The mismatch killed the session: the rightful browser is out too.
    assert error_code(await devidp.userinfo(tokens.access_token)) == "sessionInactive"

    tokens = await devidp.sign_in("gina@example.com")
    logout = await devidp.logout(tokens.access_token)
    assert logout.status == 200
    assert logout.body == b""
    assert error_code(await devidp.userinfo(tokens.access_token)) == "sessionInactive"
    assert await devidp.stats() == {"userinfo": 9, "verify": 3, "logout": 1, "login": 3}


@pytest.mark.parametrize("devidp", [{"max_inactivity_time": 60}], indirect=True)
async def test_inactivity_expires_the_session(devidp: DevIdp) -> None:
    tokens = await devidp.sign_in()
    await devidp.advance(59)
    assert (await devidp.userinfo(tokens.access_token)).status == 200
    await devidp.advance(60)
    assert error_code(await devidp.userinfo(tokens.access_token)) == "sessionExpired"


async def test_sessions_last_forever_when_limits_are_zero(devidp: DevIdp) -> None:
    tokens = await devidp.sign_in()
    await devidp.advance(10 * 365 * 86400)
    assert (await devidp.userinfo(tokens.access_token)).status == 200


@pytest.mark.parametrize(
    ("mismatch", "settings"),
    [
        ({"ip": "198.51.100.66"}, {}),
        ({"ip": None}, {}),
        ({"user_agent": "curl/8.0"}, {}),
        ({"device_id": "stolen-device"}, {}),
        ({"user_agent": "curl/8.0"}, {"hijackProtectionIp": False}),
    ],
)
async def test_hijack_mismatch_invalidates_the_session(
    devidp: DevIdp, mismatch: dict[str, str | None], settings: dict[str, bool]
) -> None:
    if settings:
        await devidp.patch_settings(**settings)
    tokens = await devidp.sign_in()
    reply = await devidp.userinfo(tokens.access_token, **mismatch)
    assert error_code(reply) == "sessionInvalid"
    [session] = await devidp.control("GET", "/sessions")
    assert session["ended"] == "hijack"


@pytest.mark.parametrize(
    ("mismatch", "settings"),
    [
        ({"ip": "198.51.100.66", "user_agent": "curl/8.0", "device_id": "x"}, {"hijackProtection": False}),
        ({"ip": "198.51.100.66"}, {"hijackProtectionIp": False}),
        ({"user_agent": "curl/8.0"}, {"hijackProtectionUserAgent": False}),
        ({"device_id": "x"}, {"hijackProtectionDeviceId": False}),
        ({"ip": f"{BROWSER_IP}, 10.0.0.1"}, {}),
        ({"ip": " 203.0.113.9 "}, {}),
    ],
)
async def test_disabled_hijack_checks_and_equivalent_ips_pass(
    devidp: DevIdp, mismatch: dict[str, str], settings: dict[str, bool]
) -> None:
    if settings:
        await devidp.patch_settings(**settings)
    tokens = await devidp.sign_in()
    assert (await devidp.userinfo(tokens.access_token, **mismatch)).status == 200


async def test_native_device_id_is_compared(devidp_factory: DevIdpFactory) -> None:
    app = AppRegistration(type="mobile", bundle_id="com.example.app", app_link=f"{APP}/native")
    devidp = await devidp_factory(app_registrations=[app])
    tokens = await devidp.sign_in(redirect_uri=f"{APP}/native", app_id="com.example.app", device_id="phone-1")
    assert (await devidp.userinfo(tokens.access_token, device_id="phone-1")).status == 200
    assert error_code(await devidp.userinfo(tokens.access_token)) == "sessionInvalid"


@pytest.mark.parametrize("devidp", [{"max_session_time": 60}], indirect=True)
async def test_check_order_expiry_before_hijack_before_domain(devidp: DevIdp) -> None:
    hijacked = await devidp.sign_in()
    reply = await devidp.userinfo(
        hijacked.access_token, ip="198.51.100.66", domain="https://evil.example.net"
    )
    assert error_code(reply) == "sessionInvalid"
    expired = await devidp.sign_in()
    await devidp.advance(61)
    reply = await devidp.userinfo(expired.access_token, ip="198.51.100.66", domain="https://evil.example.net")
    assert error_code(reply) == "sessionExpired"


async def test_success_updates_activity_and_last_login(devidp: DevIdp) -> None:
    tokens = await devidp.sign_in()
    first = (await devidp.userinfo(tokens.access_token)).json()
    await devidp.advance(3600)
    second = (await devidp.userinfo(tokens.access_token)).json()
    assert second["lastLogin"] > first["lastLogin"]
    assert second["affirmationDate"] == first["affirmationDate"]
    [session] = await devidp.control("GET", "/sessions")
    assert session["lastActivity"] == second["lastLogin"]


async def test_first_userinfo_right_after_verify_succeeds_with_the_callback_ip(devidp: DevIdp) -> None:
    login = await devidp.login(ip="192.0.2.44", user_agent="Browser/2")
    reply = await devidp.verify(login.code, verifier=login.verifier)
    token = reply.json()["access_token"]
    assert (await devidp.userinfo(token, ip="192.0.2.44", user_agent="Browser/2")).status == 200


async def test_blocked_and_unverified_users_are_reported_not_refused(devidp: DevIdp) -> None:
    tokens = await devidp.sign_in("hank@example.com")
    await devidp.patch_user("hank@example.com", blocked=True, verified=False)
    user = (await devidp.userinfo(tokens.access_token)).json()
    assert user["blocked"] is True
    assert user["verified"] is False

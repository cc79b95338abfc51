"""The error contract of every endpoint, and hostile input.

Covers the error contract: failures are `application/json` error objects `{"errorCode", "message"}`
with codes only from CentralAuth's OpenAPI `errorCode` enum, with the fake's statuses (400
validation/code/session, 403 `noPermission`, 404 unknown organization, 405 wrong method, 413 body too
large, 429, 500), and no input ever produces a traceback or a raw 500.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import APP, CALLBACK, DevIdp, basic

from authproxy.devidp.app import MAX_BODY
from authproxy.devidp.errors import ERROR_CODES

# The 30 codes of CentralAuth's OpenAPI `errorCode` enum, spelled out so the test does not trust the code.
DOCUMENTED_CODES = {
    "genericError", "noPermission", "tooManyRequests", "missingFields", "sessionMissing",
    "sessionNotVerified", "sessionExpired", "sessionInactive", "sessionInvalid", "domainInvalid",
    "loginAttemptMissing", "loginAttemptExpired", "loginAttemptInvalid", "passkeyDataMissing",
    "passkeyDataExpired", "passkeyDataInvalid", "passkeyWrongOrganization", "callbackUrlMissing",
    "callbackUrlInvalid", "connectionMissing", "organizationIdMissing", "tokenMissing", "tokenInvalid",
    "stateMissing", "stateInvalid", "codeChallengeMissing", "codeChallengeInvalid", "captchaInvalid",
    "entityMissing", "entityInvalid",
}  # fmt: skip

FAILING_CALLS: list[tuple[str, str, dict[str, Any], int]] = [
    ("POST", "/api/v1/verify", {}, 400),
    ("POST", "/api/v1/verify", {"headers": {"Authorization": basic()}}, 400),
    ("POST", "/api/v1/verify", {"headers": {"Authorization": basic()}, "json": [1, 2]}, 400),
    ("POST", "/api/v1/verify", {"headers": {"Authorization": "Basic ::::"}}, 403),
    ("POST", "/api/v1/userinfo", {"data": b"x"}, 403),
    ("POST", "/api/v1/userinfo", {"data": b"x", "headers": {"Authorization": basic()}}, 400),
    ("POST", "/api/v1/userinfo", {"data": b"\xff\xfe\xfd", "headers": {"Authorization": basic()}}, 400),
    ("POST", "/api/v1/logout", {"data": b"x", "headers": {"Authorization": basic("nobody")}}, 404),
    ("POST", "/api/v1/authenticate_direct", {"data": b"[", "headers": {"Authorization": basic()}}, 400),
    ("GET", "/api/v1/verify", {}, 405),
    ("PUT", "/api/v1/userinfo", {}, 405),
    ("DELETE", "/api/v1/logout", {}, 405),
    ("POST", "/.well-known/openid-configuration", {}, 405),
    ("GET", "/api/v1/no-such-endpoint", {}, 404),
    ("POST", "/api/v1/userinfo", {"data": b"x" * (MAX_BODY + 1), "headers": {"Authorization": basic()}}, 413),
    (
        "POST",
        "/api/v1/verify",
        {"data": {"code": "x" * (MAX_BODY + 1)}, "headers": {"Authorization": basic()}},
        413,
    ),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), FAILING_CALLS)
async def test_failures_are_json_error_objects_with_documented_codes(
    devidp: DevIdp, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    reply = await devidp.call(method, path, **kwargs)
    assert reply.status == status
    assert reply.headers["Content-Type"].startswith("application/json")
    body = reply.json()
    assert set(body) == {"errorCode", "message"}
    assert body["errorCode"] in DOCUMENTED_CODES
    assert isinstance(body["message"], str)
    assert body["message"]


async def test_wrong_method_says_which_methods_are_allowed(devidp: DevIdp) -> None:
    reply = await devidp.call("GET", "/api/v1/userinfo")
    assert reply.status == 405
    assert "POST" in reply.headers["Allow"]


def test_the_fake_knows_exactly_the_documented_codes() -> None:
    assert ERROR_CODES == DOCUMENTED_CODES


async def test_oversized_login_form_is_refused_cleanly(devidp: DevIdp) -> None:
    url = devidp.login_url()[len(devidp.url) :]
    reply = await devidp.call("POST", url, data={"email": "a" * (MAX_BODY + 10)})
    assert reply.status == 413
    assert reply.json()["errorCode"] == "genericError"


async def test_unexpected_exceptions_become_generic_errors(
    devidp: DevIdp, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from authproxy.devidp.context import CONTEXT

    tokens = await devidp.sign_in()
    # Sabotage the store so userinfo crashes; the client must still get an error object.
    monkeypatch.setattr(devidp.app[CONTEXT].store, "sessions", None)
    reply = await devidp.userinfo(tokens.access_token)
    assert reply.status == 500
    assert reply.json() == {"errorCode": "genericError", "message": "Internal server error"}
    assert "Traceback" not in reply.text
    assert tokens.access_token not in caplog.text


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", b"code=%ff%fe&redirect_uri=\xff"),
        (
            "multipart/form-data; boundary=zz",
            b'--zz\r\nContent-Disposition: form-data; name="code"\r\n\r\n\xff\r\n--zz--',
        ),
        ("multipart/form-data", b"no boundary at all"),
        ("application/json", b"\xff{"),
        ("application/json", b'{"code": 1, "redirect_uri": null}'),
        ("text/plain", b"code=abc"),
    ],
)
async def test_malformed_verify_bodies_are_client_errors(
    devidp: DevIdp, content_type: str, body: bytes
) -> None:
    headers = {"Authorization": basic(), "Content-Type": content_type}
    reply = await devidp.call("POST", "/api/v1/verify", data=body, headers=headers)
    assert 400 <= reply.status < 500
    assert reply.json()["errorCode"] in DOCUMENTED_CODES


async def test_login_errors_are_never_json_and_never_tracebacks(devidp: DevIdp) -> None:
    for query in (
        "",
        "?client_id=%ff",
        "?redirect_uri=" + "x" * 4000,
        f"?client_id=x&redirect_uri={CALLBACK}",
    ):
        reply = await devidp.call("GET", "/login" + query)
        assert reply.status == 400
        assert reply.headers["Content-Type"].startswith("text/html")
        assert "Traceback" not in reply.text


async def test_userinfo_with_a_bare_host_domain_is_domain_invalid(devidp: DevIdp) -> None:
    tokens = await devidp.sign_in()
    reply = await devidp.userinfo(tokens.access_token, domain=APP.removeprefix("https://"))
    assert reply.json()["errorCode"] == "domainInvalid"

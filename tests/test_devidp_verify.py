"""`POST /api/v1/verify` and the tokens it mints.

Covers codes (random, single use, 120 s, bound to the callback); multipart, urlencoded and JSON
bodies, with Basic, body or no client authentication, `grant_type` ignored; `redirect_uri` compared
without its query; PKCE with 36-128 character verifiers, `undefined` ignored without a challenge; the
success body, with the session activated for the callback's origin; and compact JWE `dir` +
A256CBC-HS512 keyed with the secret's UTF-8 bytes.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import uuid
from typing import Any

import pytest
from conftest import APP, CALLBACK, CLIENT_ID, CLIENT_SECRET, OTHER_APP, DevIdp, DevIdpFactory, basic
from joserfc import jwe
from joserfc.jwk import OctKey

from authproxy.devidp import AppRegistration

ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def decrypt(token: str, secret: str = CLIENT_SECRET) -> dict[str, Any]:
    plaintext = jwe.decrypt_compact(token, OctKey.import_key(secret.encode())).plaintext
    assert plaintext is not None
    claims: dict[str, Any] = json.loads(plaintext)
    return claims


async def league_verify(devidp: DevIdp, code: str, verifier: str, redirect_uri: str = CALLBACK) -> Any:
    """What league/oauth2-client (the PHP library) sends: urlencoded, body credentials, grant_type."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "code_verifier": verifier,
    }
    return await devidp.call("POST", "/api/v1/verify", data=form, headers={"User-Agent": "GuzzleHttp/7"})


async def test_npm_multipart_exchange_with_a_36_character_uuid_verifier(devidp: DevIdp) -> None:
    verifier = str(uuid.uuid4())
    assert len(verifier) == 36
    login = await devidp.login(verifier=verifier)
    reply = await devidp.verify(login.code, verifier=verifier)
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    body = reply.json()
    assert set(body) == {"access_token", "id_token", "token_type", "expires_in", "expires_at"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] is None
    assert body["expires_at"] is None
    [recorded] = [item for item in await devidp.recorded() if item["path"] == "/api/v1/verify"]
    assert recorded["headers"]["content-type"].startswith("multipart/form-data; boundary=")


async def test_league_urlencoded_exchange_with_body_credentials_and_86_character_verifier(
    devidp: DevIdp,
) -> None:
    verifier = secrets.token_urlsafe(64)[:86]
    login = await devidp.login(verifier=verifier, redirect_uri=f"{CALLBACK}?return_to=%2Fprofile")
    reply = await league_verify(devidp, login.code, verifier)
    assert reply.status == 200, reply.text


async def test_json_body_and_43_character_verifier_are_accepted(devidp: DevIdp) -> None:
    verifier = secrets.token_urlsafe(32)
    assert len(verifier) == 43
    login = await devidp.login(verifier=verifier)
    body = {"code": login.code, "redirect_uri": CALLBACK, "code_verifier": verifier}
    reply = await devidp.call("POST", "/api/v1/verify", json=body, headers={"Authorization": basic()})
    assert reply.status == 200, reply.text


async def test_basic_credentials_are_split_at_the_first_colon(devidp_factory: DevIdpFactory) -> None:
    secret = "ab:" + "c" * 61
    devidp = await devidp_factory(client_secret=secret)
    login = await devidp.login()
    reply = await devidp.verify(login.code, verifier=login.verifier, auth=basic(CLIENT_ID, secret))
    assert reply.status == 200, reply.text


@pytest.mark.parametrize(
    ("auth", "status", "code"),
    [
        (basic(CLIENT_ID, "x" * 64), 403, "noPermission"),
        (basic("other-org", CLIENT_SECRET), 404, "organizationIdMissing"),
        ("Basic !!!not-base64!!!", 403, "noPermission"),
        ("Basic " + base64.b64encode(b"no-colon-here").decode(), 403, "noPermission"),
        ("Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(), 403, "noPermission"),
        ("Bearer abc", 403, "noPermission"),
        ("Basic", 403, "noPermission"),
    ],
)
async def test_bad_client_credentials_are_refused(devidp: DevIdp, auth: str, status: int, code: str) -> None:
    login = await devidp.login()
    reply = await devidp.verify(login.code, verifier=login.verifier, auth=auth)
    assert reply.status == status
    assert reply.json()["errorCode"] == code


async def test_confidential_code_needs_client_credentials(devidp: DevIdp) -> None:
    login = await devidp.login()
    form = {"code": login.code, "redirect_uri": CALLBACK, "code_verifier": login.verifier}
    reply = await devidp.call("POST", "/api/v1/verify", data=form)
    assert reply.status == 403
    assert reply.json()["errorCode"] == "noPermission"


async def test_wrong_body_secret_is_refused(devidp: DevIdp) -> None:
    login = await devidp.login()
    reply = await devidp.call(
        "POST",
        "/api/v1/verify",
        data={"code": login.code, "redirect_uri": CALLBACK, "client_id": CLIENT_ID, "client_secret": "nope"},
    )
    assert reply.status == 403
    assert reply.json()["errorCode"] == "noPermission"


async def test_native_app_code_is_exchanged_without_credentials(devidp_factory: DevIdpFactory) -> None:
    app = AppRegistration(
        type="mobile", bundle_id="com.example.app", app_link="https://app.example.com/native"
    )
    devidp = await devidp_factory(app_registrations=[app])
    login = await devidp.login(redirect_uri=f"{APP}/native", app_id="com.example.app", device_id="dev-9")
    # React Native: multipart with code, redirect_uri and code_verifier only.
    form = {"code": login.code, "redirect_uri": f"{APP}/native", "code_verifier": login.verifier}
    reply = await devidp.call("POST", "/api/v1/verify", data=form)
    assert reply.status == 200, reply.text


async def test_native_context_in_the_query_must_match_the_login(devidp_factory: DevIdpFactory) -> None:
    app = AppRegistration(type="desktop", bundle_id="com.example.desk", app_link="http://localhost:12120")
    devidp = await devidp_factory(app_registrations=[app])
    for device, expected in (("other-device", 400), ("dev-1", 200)):
        login = await devidp.login(
            redirect_uri="http://localhost:12120", app_id="com.example.desk", device_id="dev-1", referer=None
        )
        form = {"code": login.code, "redirect_uri": "http://localhost:12120", "code_verifier": login.verifier}
        query = {"app_id": "com.example.desk", "device_id": device}
        reply = await devidp.call("POST", "/api/v1/verify", params=query, data=form)
        assert reply.status == expected, reply.text


@pytest.mark.parametrize(
    "redirect_uri",
    [
        CALLBACK,
        f"{CALLBACK}?return_to=%2Fother",
        f"{CALLBACK}?return_to=%2Fdash&code=whatever&state=abc",
        "HTTPS://APP.EXAMPLE.COM:443/api/auth/callback",
    ],
)
async def test_redirect_uri_is_compared_without_its_query(devidp: DevIdp, redirect_uri: str) -> None:
    login = await devidp.login(redirect_uri=f"{CALLBACK}?return_to=%2Fdash")
    reply = await league_verify(devidp, login.code, login.verifier, redirect_uri=redirect_uri)
    assert reply.status == 200, reply.text


@pytest.mark.parametrize(
    "redirect_uri",
    [f"{APP}/api/auth/other", f"{APP}/api/auth/callback/", f"{OTHER_APP}/api/auth/callback", "", "garbage"],
)
async def test_redirect_uri_with_another_origin_or_path_is_refused(devidp: DevIdp, redirect_uri: str) -> None:
    login = await devidp.login()
    reply = await league_verify(devidp, login.code, login.verifier, redirect_uri=redirect_uri)
    assert reply.status == 400
    assert reply.json()["errorCode"] in ({"callbackUrlInvalid"} if redirect_uri else {"missingFields"})


@pytest.mark.parametrize(
    "verifier",
    [None, "", "undefined", "a" * 35, "a" * 129, str(uuid.uuid4()), "é" * 40, "a b" * 20],
)
async def test_pkce_refuses_missing_short_long_and_wrong_verifiers(
    devidp: DevIdp, verifier: str | None
) -> None:
    login = await devidp.login()
    form = {"code": login.code, "redirect_uri": CALLBACK}
    if verifier is not None:
        form["code_verifier"] = verifier
    reply = await devidp.call("POST", "/api/v1/verify", data=form, headers={"Authorization": basic()})
    assert reply.status == 400
    assert reply.json()["errorCode"] == "codeChallengeInvalid"


@pytest.mark.parametrize("length", [36, 128])
async def test_pkce_accepts_verifiers_from_36_to_128_characters(devidp: DevIdp, length: int) -> None:
    verifier = ("abcdefghij-._~" * 10)[:length]
    login = await devidp.login(verifier=verifier)
    reply = await devidp.verify(login.code, verifier=verifier)
    assert reply.status == 200, reply.text


async def test_a_code_works_only_once(devidp: DevIdp) -> None:
    login = await devidp.login()
    first = await devidp.verify(login.code, verifier=login.verifier)
    second = await devidp.verify(login.code, verifier=login.verifier)
    assert first.status == 200
    assert second.status == 400
    assert second.json()["errorCode"] == "entityInvalid"


async def test_a_failed_exchange_uses_the_code_up(devidp: DevIdp) -> None:
    login = await devidp.login()
    wrong = await devidp.verify(login.code, verifier=str(uuid.uuid4()))
    right = await devidp.verify(login.code, verifier=login.verifier)
    assert wrong.json()["errorCode"] == "codeChallengeInvalid"
    assert right.json()["errorCode"] == "entityInvalid"


async def test_codes_are_random_and_opaque(devidp: DevIdp) -> None:
    codes = {(await devidp.login()).code for _ in range(5)}
    assert len(codes) == 5
    assert all(len(code) >= 40 for code in codes)


@pytest.mark.parametrize(("wait", "status"), [(119, 200), (120, 400)])
async def test_codes_expire_after_120_seconds(devidp: DevIdp, wait: int, status: int) -> None:
    login = await devidp.login()
    await devidp.advance(wait)
    reply = await devidp.verify(login.code, verifier=login.verifier)
    assert reply.status == status


async def test_unknown_code_and_missing_fields(devidp: DevIdp) -> None:
    unknown = await devidp.verify("no-such-code", verifier=str(uuid.uuid4()))
    assert unknown.status == 400
    assert unknown.json()["errorCode"] == "entityInvalid"
    missing = await devidp.call(
        "POST", "/api/v1/verify", data={"code": "x"}, headers={"Authorization": basic()}
    )
    assert missing.status == 400
    assert missing.json()["errorCode"] == "missingFields"


async def test_code_of_a_session_ended_before_the_exchange_is_refused(devidp: DevIdp) -> None:
    login = await devidp.login("dave@example.com")
    await devidp.end_sessions("dave@example.com")
    reply = await devidp.verify(login.code, verifier=login.verifier)
    assert reply.status == 400
    assert reply.json()["errorCode"] == "sessionInactive"


async def test_tokens_are_compact_jwe_dir_a256cbc_hs512_keyed_with_the_secret(devidp: DevIdp) -> None:
    tokens = await devidp.sign_in("erin@example.com")
    expected_header = base64.urlsafe_b64encode(b'{"alg":"dir","enc":"A256CBC-HS512"}').rstrip(b"=").decode()
    for token in (tokens.access_token, tokens.id_token):
        parts = token.split(".")
        assert len(parts) == 5
        assert parts[0] == expected_header
        assert parts[1] == ""
    access, identity = decrypt(tokens.access_token), decrypt(tokens.id_token)
    assert set(access) == {"sessionId", "iat"}
    assert set(identity) == {"sessionId", "iat", "user"}
    assert access["sessionId"] == identity["sessionId"]
    assert identity["user"]["email"] == "erin@example.com"
    assert identity["user"]["organizationId"] == CLIENT_ID
    with pytest.raises(Exception, match=r"(?i)decrypt|tag|invalid"):
        decrypt(tokens.access_token, secret="f" * 64)


@pytest.mark.parametrize("devidp", [{"max_session_time": 3600}], indirect=True)
async def test_max_session_time_sets_expiry_fields_and_exp_claim(devidp: DevIdp) -> None:
    tokens = await devidp.sign_in()
    assert tokens.body["expires_in"] == 3600
    assert ISO_MS.fullmatch(tokens.body["expires_at"])
    claims = decrypt(tokens.access_token)
    assert claims["exp"] - claims["iat"] in (3599, 3600)
    [session] = await devidp.control("GET", "/sessions")
    assert session["created"][:19] < tokens.body["expires_at"][:19]


async def test_exchange_activates_the_session_for_the_callback_origin_only(devidp: DevIdp) -> None:
    tokens = await devidp.sign_in()
    [session] = await devidp.control("GET", "/sessions")
    assert session["origins"] == [APP]
    assert (await devidp.userinfo(tokens.access_token, domain=APP)).status == 200

"""`POST /api/v1/logout`: session-wide logout on the back channel.

Covers Basic credentials, a raw token body, the session ended, 200 with an empty body and error JSON
for undecryptable or unknown tokens; and, since the logout ends the CentralAuth session for every
application that shares it (docs/centralauth.md), every relying party sharing the session failing its
next userinfo check.
"""

from __future__ import annotations

import pytest
from conftest import CLIENT_SECRET, OTHER_APP, DevIdp, basic
from yarl import URL

from authproxy.devidp.tokens import encrypt


async def test_logout_answers_200_with_an_empty_body_and_ends_the_session(devidp: DevIdp) -> None:
    tokens = await devidp.sign_in()
    reply = await devidp.logout(tokens.access_token)
    assert reply.status == 200
    assert reply.body == b""
    assert reply.headers.get("Content-Length") == "0"
    after = await devidp.userinfo(tokens.access_token)
    assert after.status == 400
    assert after.json()["errorCode"] == "sessionInactive"
    [session] = await devidp.control("GET", "/sessions")
    assert session["ended"] == "logout"


async def test_logout_with_the_id_token_and_trailing_newline(devidp: DevIdp) -> None:
    tokens = await devidp.sign_in()
    reply = await devidp.logout(tokens.id_token + "\n")
    assert reply.status == 200
    assert (await devidp.userinfo(tokens.access_token)).json()["errorCode"] == "sessionInactive"


async def test_repeated_logout_is_harmless(devidp: DevIdp) -> None:
    tokens = await devidp.sign_in()
    assert (await devidp.logout(tokens.access_token)).status == 200
    again = await devidp.logout(tokens.access_token)
    assert again.status == 200
    assert again.body == b""


async def test_logout_ends_the_session_for_every_relying_party_sharing_it(devidp: DevIdp) -> None:
    await devidp.patch_settings(autoLogin=True)
    login = await devidp.login()
    [delivery] = await devidp.control("GET", "/autologin")
    primary = await devidp.verify(login.code, verifier=login.verifier)
    delivered = URL(delivery["url"])
    secondary = await devidp.verify(delivered.query["code"], redirect_uri=str(delivered))
    assert secondary.status == 200, secondary.text
    other_token = secondary.json()["access_token"]
    assert (await devidp.userinfo(other_token, domain=OTHER_APP)).status == 200
    assert (await devidp.logout(primary.json()["access_token"])).status == 200
    reply = await devidp.userinfo(other_token, domain=OTHER_APP)
    assert reply.json()["errorCode"] == "sessionInactive"


@pytest.mark.parametrize(
    ("token", "code"),
    [
        ("", "tokenInvalid"),
        ("not-a-token", "tokenInvalid"),
        (encrypt("e" * 64, {"sessionId": "x"}), "tokenInvalid"),
        (encrypt(CLIENT_SECRET, {"sessionId": "unknown-session"}), "sessionMissing"),
    ],
)
async def test_logout_with_bad_tokens_answers_error_json(devidp: DevIdp, token: str, code: str) -> None:
    reply = await devidp.logout(token)
    assert reply.status == 400
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.json()["errorCode"] == code


async def test_logout_requires_client_credentials(devidp: DevIdp) -> None:
    tokens = await devidp.sign_in()
    reply = await devidp.logout(tokens.access_token, auth=basic(secret="1" * 64))
    assert reply.status == 403
    assert reply.json()["errorCode"] == "noPermission"
    assert (await devidp.userinfo(tokens.access_token)).status == 200

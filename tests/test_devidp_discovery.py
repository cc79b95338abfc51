"""Public metadata of the fake: the discovery document and the desktop client challenge.

Covers `/.well-known/openid-configuration` (a standard OpenID Connect discovery document) and
`/api/v1/client_challenge/{client_id}` (a text nonce).
"""

from __future__ import annotations

from conftest import CLIENT_ID, DevIdp, DevIdpFactory


async def test_discovery_document_advertises_the_fakes_own_endpoints(devidp: DevIdp) -> None:
    reply = await devidp.call("GET", "/.well-known/openid-configuration")
    assert reply.status == 200
    assert reply.json() == {
        "issuer": devidp.url,
        "authorization_endpoint": f"{devidp.url}/login",
        "token_endpoint": f"{devidp.url}/api/v1/verify",
        "userinfo_endpoint": f"{devidp.url}/api/v1/userinfo",
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
    }


async def test_discovery_document_uses_the_public_url_when_configured(devidp_factory: DevIdpFactory) -> None:
    devidp = await devidp_factory(public_url="https://auth.example.com/")
    document = (await devidp.call("GET", "/.well-known/openid-configuration")).json()
    assert document["issuer"] == "https://auth.example.com"
    assert document["token_endpoint"] == "https://auth.example.com/api/v1/verify"
    assert "jwks_uri" not in document


async def test_client_challenge_is_a_fresh_text_nonce(devidp: DevIdp) -> None:
    first = await devidp.call("GET", f"/api/v1/client_challenge/{CLIENT_ID}")
    second = await devidp.call("GET", f"/api/v1/client_challenge/{CLIENT_ID}")
    assert first.status == 200
    assert first.headers["Content-Type"].startswith("text/plain")
    assert len(first.text) >= 32
    assert first.text != second.text


async def test_client_challenge_for_an_unknown_organization(devidp: DevIdp) -> None:
    reply = await devidp.call("GET", "/api/v1/client_challenge/nobody")
    assert reply.status == 404
    assert reply.json()["errorCode"] == "organizationIdMissing"

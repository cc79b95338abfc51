"""The fake's organization model and origin rules.

Covers organization settings with CentralAuth's names and semantics and the fake's defaults;
64-character secrets; the whitelist with exact and wildcard origins, the empty whitelist admitting
everything, and `allowLocalhost` admitting `http://localhost:*`.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import DevIdp

from authproxy.devidp import AppRegistration, DevIdpSettings
from authproxy.devidp.origins import (
    append_query,
    callback_key,
    is_whitelisted,
    normalize_whitelist_entry,
    origin_of,
)
from authproxy.devidp.settings import apply_changes, generate_secret


def test_default_settings_of_a_new_organization() -> None:
    settings = DevIdpSettings()
    assert len(settings.client_secret) == 64
    assert settings.client_id
    assert (settings.max_session_time, settings.max_inactivity_time) == (0, 0)
    assert settings.hijack_protection and settings.hijack_checks() == (True, True, True)
    assert settings.auto_login is False
    assert settings.check_referrer is True
    assert settings.enable_user_creation is True
    assert settings.allow_localhost is True
    assert settings.whitelist == []
    assert settings.code_ttl == 120
    assert "client_secret" not in repr(settings)


def test_generated_secrets_are_64_fresh_characters() -> None:
    secrets = {generate_secret() for _ in range(10)}
    assert len(secrets) == 10
    assert all(len(secret) == 64 and secret.isascii() for secret in secrets)


@pytest.mark.parametrize(
    "overrides",
    [
        {"client_secret": "x" * 63},
        {"client_secret": "x" * 65},
        {"client_secret": "é" * 64},
        {"client_id": ""},
        {"whitelist": ["https://app.example.com/path"]},
        {"whitelist": ["app.example.com"]},
        {"whitelist": ["https://*"]},
        {"max_session_time": -1},
        {"max_inactivity_time": True},
        {"code_ttl": 0},
        {"public_url": "not a url"},
    ],
)
def test_invalid_settings_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        DevIdpSettings(**overrides)


def test_hijack_master_switch_turns_every_check_off() -> None:
    assert DevIdpSettings(hijack_protection=False).hijack_checks() == (False, False, False)
    assert DevIdpSettings(hijack_protection_ip=False).hijack_checks() == (False, True, True)


def test_camel_case_changes_build_a_new_validated_settings_object() -> None:
    settings = DevIdpSettings(whitelist=["https://a.example.com"])
    changed = apply_changes(
        settings,
        {
            "maxSessionTime": 10,
            "autoLogin": True,
            "appRegistrations": [{"type": "desktop", "bundleId": "d", "appLink": "http://localhost:1"}],
        },
    )
    assert changed is not settings
    assert (changed.max_session_time, changed.auto_login) == (10, True)
    assert changed.registration("d") == AppRegistration("desktop", "d", "http://localhost:1")
    assert settings.max_session_time == 0
    with pytest.raises(ValueError, match="maxSessionTime"):
        apply_changes(settings, {"maxSessionTime": "10"})


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://App.Example.com:443/cb?x=1#f", "https://app.example.com"),
        ("http://localhost:3000/api", "http://localhost:3000"),
        ("http://[::1]:8080/", "http://[::1]:8080"),
        ("https://app.example.com:8443", "https://app.example.com:8443"),
        ("ftp://app.example.com", None),
        ("//app.example.com/x", None),
        ("https://user@app.example.com", None),
        ("https://app.example.com:99999", None),
        ("https://app example.com", None),
        ("https://app.example.com\\@evil.net", None),
        ("", None),
    ],
)
def test_origin_of(url: str, origin: str | None) -> None:
    assert origin_of(url) == origin


def test_callback_key_ignores_query_and_default_port_but_refuses_fragments() -> None:
    assert callback_key("https://a.example.com:443/cb?return_to=%2F") == "https://a.example.com/cb"
    assert callback_key("https://a.example.com") == "https://a.example.com/"
    assert callback_key("https://a.example.com/cb#frag") is None


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("https://team.apps.example.com", True),
        ("https://a.b.apps.example.com", True),
        ("https://apps.example.com", False),
        ("http://team.apps.example.com", False),
        ("https://team.apps.example.com:8443", False),
        ("https://evilapps.example.com", False),
        ("https://app.example.com:8443", False),
        ("http://localhost:5173", True),
        ("http://127.0.0.1:8080", True),
        ("http://[::1]:8080", True),
        ("https://localhost.evil.net", False),
    ],
)
def test_whitelist_matching(origin: str, allowed: bool) -> None:
    whitelist = [
        normalize_whitelist_entry(e) for e in ("https://app.example.com", "https://*.apps.example.com")
    ]
    assert is_whitelisted(origin, whitelist, allow_localhost=True) is allowed


def test_localhost_needs_allow_localhost_and_empty_whitelist_allows_all() -> None:
    assert not is_whitelisted("http://localhost:3000", ["https://app.example.com"], allow_localhost=False)
    assert is_whitelisted("https://anything.example.org", [], allow_localhost=False)


def test_append_query_keeps_the_existing_query_verbatim() -> None:
    assert (
        append_query("https://a/cb?return_to=%2Fx", [("code", "c d")])
        == "https://a/cb?return_to=%2Fx&code=c+d"
    )
    assert append_query("https://a/cb", [("code", "c")]) == "https://a/cb?code=c"
    assert append_query("https://a/cb?", [("code", "c")]) == "https://a/cb?code=c"


@pytest.mark.parametrize("devidp", [{"whitelist": []}], indirect=True)
async def test_empty_whitelist_admits_any_callback(devidp: DevIdp) -> None:
    login = await devidp.login(
        redirect_uri="https://anywhere.example.org/cb", referer="https://anywhere.example.org/"
    )
    assert "code" in login.callback.query


async def test_allow_localhost_admits_local_callbacks_that_are_not_whitelisted(devidp: DevIdp) -> None:
    tokens = await devidp.sign_in(redirect_uri="http://localhost:3000/api/auth/callback")
    reply = await devidp.userinfo(tokens.access_token, domain="http://localhost:3000")
    assert reply.status == 200
    await devidp.patch_settings(allowLocalhost=False)
    url = devidp.login_url(redirect_uri="http://localhost:3000/api/auth/callback")
    reply = await devidp.call("GET", url[len(devidp.url) :])
    assert reply.status == 400
    assert "callbackUrlInvalid" in reply.text

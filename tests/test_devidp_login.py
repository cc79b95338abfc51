"""The fake's browser-facing login: `GET /login`, `POST /login`.

Covers every `/login` parameter accepted; validation and error codes, and the referrer check; the
browser's IP, user agent and device id recorded; the login UI, auto-approve, the callback with the
redirect_uri's query preserved, and errors with `error`/`error_description`/`state`; affirmation
logins; and users created on first login, or refused when sign-up is off.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from conftest import APP, BROWSER_IP, BROWSER_UA, CALLBACK, CLIENT_ID, DevIdp, DevIdpFactory
from yarl import URL


def b64json(data: Any) -> str:
    return base64.b64encode(json.dumps(data).encode()).decode()


def query_of(location: str) -> dict[str, str]:
    return dict(URL(location).query)


async def test_form_has_one_email_field_and_posts_back_to_the_same_query(devidp: DevIdp) -> None:
    url = devidp.login_url()
    reply = await devidp.call("GET", url[len(devidp.url) :])
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/html")
    assert reply.text.count("<input") == 1
    assert 'name="email"' in reply.text
    assert f'action="{URL(url).path_qs}"'.replace("&", "&amp;") in reply.text


async def test_submitting_the_form_redirects_to_callback_with_code_and_state(devidp: DevIdp) -> None:
    login = await devidp.login("alice@example.com", state="s-123")
    assert str(login.callback.with_query(None)) == CALLBACK
    assert login.callback.query["state"] == "s-123"
    assert len(login.code) >= 32
    assert (await devidp.stats())["login"] == 1


async def test_callback_keeps_the_redirect_uri_query_byte_for_byte(devidp: DevIdp) -> None:
    redirect_uri = f"{CALLBACK}?return_to=https%3A%2F%2Fapp.example.com%2Fdash%3Fx%3D1&lang=en"
    login = await devidp.login(redirect_uri=redirect_uri)
    location = login.page.headers["Location"] if login.page else ""
    assert location.startswith(redirect_uri + "&code=")
    assert login.callback.query["return_to"] == "https://app.example.com/dash?x=1"
    assert login.callback.query["lang"] == "en"


async def test_every_documented_parameter_is_accepted_and_unknown_ones_are_ignored(devidp: DevIdp) -> None:
    params = {
        "email": "bob@example.com",
        "error_description": "Please sign in again",
        "translations": b64json({"loginPageIntro": "Welkom terug", "undo": "Ongedaan maken"}),
        "theme_settings": b64json({"primaryColor": "#ff0000", "loginPageLayout": "centered"}),
        "embed": "1",
        "device_id": "",
        "client_assertion": "eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0.",
        "scope": "",
        "approval_prompt": "auto",
    }
    reply = await devidp.call("GET", devidp.login_url(**params)[len(devidp.url) :])
    assert reply.status == 200
    assert "Welkom terug" in reply.text
    assert "Please sign in again" in reply.text
    assert 'value="bob@example.com"' in reply.text
    assert "--primary:#ff0000" in reply.text
    # embed=1: the page posts its height to the parent and may be framed.
    assert "postMessage" in reply.text
    assert "X-Frame-Options" not in reply.headers


async def test_legacy_error_message_parameter_is_shown_escaped(devidp: DevIdp) -> None:
    url = devidp.login_url(error_message="<script>alert(1)</script>")
    reply = await devidp.call("GET", url[len(devidp.url) :])
    assert reply.status == 200
    assert "<script>alert(1)</script>" not in reply.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in reply.text
    assert reply.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("garbage", ["%%%not base64", "bm90IGpzb24=", "WzEsMiwzXQ==", "ë", "===="])
async def test_undecodable_translations_and_theme_are_ignored(devidp: DevIdp, garbage: str) -> None:
    url = devidp.login_url(translations=garbage, theme_settings=garbage)
    reply = await devidp.call("GET", url[len(devidp.url) :])
    assert reply.status == 200
    assert "Enter your e-mail address" in reply.text


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"client_id": None}, "organizationIdMissing"),
        ({"client_id": "someone-else"}, "organizationIdMissing"),
        ({"redirect_uri": None}, "callbackUrlMissing"),
        ({"redirect_uri": "https://evil.example.net/cb"}, "callbackUrlInvalid"),
        ({"redirect_uri": "/relative/callback"}, "callbackUrlInvalid"),
        ({"redirect_uri": "javascript:alert(1)"}, "callbackUrlInvalid"),
        ({"redirect_uri": "https://user:pw@app.example.com/cb"}, "callbackUrlInvalid"),
        ({"redirect_uri": "https://apps.example.com/cb"}, "callbackUrlInvalid"),
        ({"app_id": "com.unknown.app"}, "entityInvalid"),
    ],
)
async def test_untrusted_client_or_callback_gets_an_error_page_never_a_redirect(
    devidp: DevIdp, change: dict[str, str | None], code: str
) -> None:
    url = URL(devidp.login_url())
    query = {key: value for key, value in {**url.query, **change}.items() if value is not None}
    for method in ("GET", "POST"):
        reply = await devidp.call(
            method, str(url.with_query(query).relative()), data={"email": "a@example.com"}
        )
        assert reply.status == 400
        assert "Location" not in reply.headers
        assert reply.headers["Content-Type"].startswith("text/html")
        assert code in reply.text


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"response_type": "token"}, "entityInvalid"),
        ({"response_type": None}, "missingFields"),
        ({"code_challenge": None}, "codeChallengeMissing"),
        ({"code_challenge_method": "plain"}, "codeChallengeInvalid"),
        ({"code_challenge_method": None}, "codeChallengeInvalid"),
        ({"code_challenge": "a" * 42}, "codeChallengeInvalid"),
        ({"code_challenge": "a" * 42 + "="}, "codeChallengeInvalid"),
    ],
)
async def test_flow_errors_redirect_to_the_callback_with_error_and_state(
    devidp: DevIdp, change: dict[str, str | None], code: str
) -> None:
    url = URL(devidp.login_url(redirect_uri=f"{CALLBACK}?return_to=%2Fhome", state="st-1"))
    query = {key: value for key, value in {**url.query, **change}.items() if value is not None}
    for method in ("GET", "POST"):
        reply = await devidp.call(
            method, str(url.with_query(query).relative()), data={"email": "a@example.com"}
        )
        assert reply.status == 302
        location = reply.headers["Location"]
        assert location.startswith(f"{CALLBACK}?return_to=%2Fhome&error={code}&")
        params = query_of(location)
        assert params["state"] == "st-1"
        assert params["error_description"]
        assert "code" not in params
    assert (await devidp.stats())["login"] == 0


async def test_missing_state_redirects_with_state_missing(devidp: DevIdp) -> None:
    url = URL(devidp.login_url())
    query = {key: value for key, value in url.query.items() if key != "state"}
    reply = await devidp.call("GET", str(url.with_query(query).relative()))
    assert reply.status == 302
    params = query_of(reply.headers["Location"])
    assert params["error"] == "stateMissing"
    assert "state" not in params


@pytest.mark.parametrize(
    ("referer", "allowed"),
    [
        (f"{APP}/some/page", True),
        ("https://team.apps.example.com/", True),
        ("http://localhost:3000/", True),
        (None, True),
        ("https://evil.example.net/", False),
        ("not a url", False),
    ],
)
async def test_referrer_must_be_whitelisted_when_present(
    devidp: DevIdp, referer: str | None, allowed: bool
) -> None:
    headers = {"Referer": referer} if referer else {}
    reply = await devidp.call("GET", devidp.login_url()[len(devidp.url) :], headers=headers)
    if allowed:
        assert reply.status == 200
    else:
        assert reply.status == 302
        assert query_of(reply.headers["Location"])["error"] == "domainInvalid"


@pytest.mark.parametrize("devidp", [{"check_referrer": False}], indirect=True)
async def test_check_referrer_off_admits_any_referrer(devidp: DevIdp) -> None:
    headers = {"Referer": "https://evil.example.net/"}
    reply = await devidp.call("GET", devidp.login_url()[len(devidp.url) :], headers=headers)
    assert reply.status == 200


async def test_form_submission_with_the_fakes_own_page_as_referrer_is_accepted(devidp: DevIdp) -> None:
    # The browser's Referer on the POST is the login page itself; that must not trip checkReferrer.
    login = await devidp.login(referer=None)
    assert "code" in login.callback.query


async def test_login_records_browser_ip_user_agent_and_device_id(devidp: DevIdp) -> None:
    await devidp.login(ip="198.51.100.7, 10.0.0.1", user_agent="Agent/1", device_id="device-42")
    [session] = await devidp.control("GET", "/sessions")
    assert session["ip"] == "198.51.100.7"
    assert session["userAgent"] == "Agent/1"
    assert session["deviceId"] == "device-42"


@pytest.mark.parametrize("devidp", [{"trust_forwarded_for": False}], indirect=True)
async def test_forwarded_for_is_ignored_unless_trusted(devidp: DevIdp) -> None:
    await devidp.login(ip="198.51.100.7")
    [session] = await devidp.control("GET", "/sessions")
    assert session["ip"] == "127.0.0.1"


@pytest.mark.parametrize(
    "email", ["", "not-an-email", "two@@example.com", "a b@example.com", "x" * 250 + "@e.com"]
)
async def test_invalid_email_re_renders_the_form(devidp: DevIdp, email: str) -> None:
    url = devidp.login_url()[len(devidp.url) :]
    reply = await devidp.call("POST", url, data={"email": email})
    assert reply.status == 400
    assert 'name="email"' in reply.text
    assert "Enter a valid e-mail address" in reply.text


async def test_garbage_form_body_re_renders_the_form(devidp: DevIdp) -> None:
    url = devidp.login_url()[len(devidp.url) :]
    headers = {"Content-Type": "multipart/form-data; boundary=x"}
    reply = await devidp.call("POST", url, data=b"\xff\xfe garbage", headers=headers)
    assert reply.status == 400
    assert 'name="email"' in reply.text


async def test_first_login_creates_the_user_and_later_logins_reuse_it(devidp: DevIdp) -> None:
    await devidp.login("Carol@Example.com ")
    await devidp.login("carol@example.com")
    users = await devidp.control("GET", "/users")
    assert [user["email"] for user in users] == ["Carol@Example.com"]
    assert users[0]["organizationId"] == CLIENT_ID
    assert users[0]["verified"] is True


@pytest.mark.parametrize("devidp", [{"enable_user_creation": False}], indirect=True)
async def test_without_user_creation_unknown_emails_are_refused(devidp: DevIdp) -> None:
    url = devidp.login_url()[len(devidp.url) :]
    reply = await devidp.call("POST", url, data={"email": "new@example.com"})
    assert reply.status == 403
    assert "No account exists" in reply.text
    assert await devidp.control("GET", "/users") == []
    await devidp.patch_user("new@example.com")
    login = await devidp.login("new@example.com")
    assert "code" in login.callback.query


@pytest.mark.parametrize("devidp", [{"auto_approve_email": "robot@example.com"}], indirect=True)
async def test_auto_approve_completes_on_get(devidp: DevIdp) -> None:
    url = devidp.login_url(state="auto")[len(devidp.url) :]
    reply = await devidp.call("GET", url, headers={"X-Forwarded-For": BROWSER_IP, "User-Agent": BROWSER_UA})
    assert reply.status == 302
    callback = URL(reply.headers["Location"])
    assert callback.query["state"] == "auto"
    assert "code" in callback.query
    [user] = await devidp.control("GET", "/users")
    assert user["email"] == "robot@example.com"


async def test_affirmation_login_says_so_and_marks_the_callback(devidp: DevIdp) -> None:
    first = await devidp.sign_in("alice@example.com")
    url = devidp.login_url(affirm="1", email="alice@example.com")
    page = await devidp.call("GET", url[len(devidp.url) :])
    assert "Confirm it" in page.text
    assert "affirm your existing session" in page.text
    await devidp.advance(600)
    verifier = "a" * 43
    login = await devidp.login("alice@example.com", verifier=verifier, affirm="1")
    assert login.callback.query["affirm"] == "1"
    reply = await devidp.verify(login.code, verifier=verifier)
    second = reply.json()["access_token"]
    old = (await devidp.userinfo(first.access_token)).json()
    new = (await devidp.userinfo(second)).json()
    assert new["affirmationDate"] > old["affirmationDate"]


async def test_plain_login_callback_has_no_affirm_flag(devidp: DevIdp) -> None:
    login = await devidp.login()
    assert "affirm" not in login.callback.query


async def test_native_app_login_is_admitted_on_its_registered_link(devidp_factory: DevIdpFactory) -> None:
    from authproxy.devidp import AppRegistration

    app = AppRegistration(type="desktop", bundle_id="com.example.desk", app_link="http://localhost:12120")
    devidp = await devidp_factory(app_registrations=[app], allow_localhost=False)
    login = await devidp.login(
        redirect_uri="http://localhost:12120", app_id="com.example.desk", device_id="dev-1", referer=None
    )
    assert login.callback.host == "localhost"
    assert "code" in login.callback.query

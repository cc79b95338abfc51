"""The fake's test-control API under `/_devidp/`.

Covers users and settings changed at runtime, one session or all of a user's sessions revoked, the
clock moved, recorded requests read back, and faults forced (429, 5xx, timeouts, dropped connections),
under the names of the test-control API in README.md, which are part of the public contract.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from conftest import APP, BROWSER_IP, CLIENT_ID, DevIdp, basic

from authproxy.devidp.recorder import DEFAULT_CAPACITY, Recorder


async def test_user_logout_ends_every_session_of_that_user_only(devidp: DevIdp) -> None:
    first = await devidp.sign_in("kim@example.com")
    second = await devidp.sign_in("kim@example.com")
    other = await devidp.sign_in("lee@example.com")
    assert await devidp.end_sessions("kim@example.com") == {"ended": 2}
    for tokens in (first, second):
        assert (await devidp.userinfo(tokens.access_token)).json()["errorCode"] == "sessionInactive"
    assert (await devidp.userinfo(other.access_token)).status == 200
    unknown = await devidp.call("POST", "/_devidp/users/nobody@example.com/logout")
    assert (unknown.status, unknown.json()["errorCode"]) == (404, "entityMissing")


async def test_patch_user_changes_flags_and_creates_unknown_users(devidp: DevIdp) -> None:
    created = await devidp.patch_user("mia@example.com", blocked=True)
    assert created["blocked"] is True
    assert created["verified"] is True
    assert created["organizationId"] == CLIENT_ID
    changed = await devidp.patch_user("MIA@example.com", verified=False)
    assert changed["id"] == created["id"]
    assert (changed["blocked"], changed["verified"]) == (True, False)
    shown = await devidp.control("GET", "/users/mia@example.com")
    assert shown["user"]["verified"] is False


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"blocked": "yes"}', b'{"admin": true}'])
async def test_patch_user_rejects_bad_input(devidp: DevIdp, body: bytes) -> None:
    reply = await devidp.call("PATCH", "/_devidp/users/a@example.com", data=body)
    assert (reply.status, reply.json()["errorCode"]) == (400, "entityInvalid")


async def test_revoke_one_session(devidp: DevIdp) -> None:
    kept = await devidp.sign_in("nia@example.com")
    revoked = await devidp.sign_in("nia@example.com")
    sessions = await devidp.control("GET", "/sessions")
    await devidp.control("DELETE", f"/sessions/{sessions[1]['id']}")
    assert (await devidp.userinfo(kept.access_token)).status == 200
    assert (await devidp.userinfo(revoked.access_token)).json()["errorCode"] == "sessionInactive"
    missing = await devidp.call("DELETE", "/_devidp/sessions/nope")
    assert missing.status == 404


@pytest.mark.parametrize(
    ("status", "content_type", "code"),
    [
        (429, "application/json", "tooManyRequests"),
        (500, "application/json", "genericError"),
        (503, "text/html", None),
    ],
)
async def test_faults_answer_the_requested_status(
    devidp: DevIdp, status: int, content_type: str, code: str | None
) -> None:
    tokens = await devidp.sign_in()
    await devidp.fault("userinfo", status=status)
    reply = await devidp.userinfo(tokens.access_token)
    assert reply.status == status
    assert reply.headers["Content-Type"].startswith(content_type)
    if code:
        assert reply.json()["errorCode"] == code
    else:
        assert "<html>" in reply.text
    # The fault was used up: the next call answers normally.
    assert (await devidp.userinfo(tokens.access_token)).status == 200


@pytest.mark.parametrize("status", [502, 504])
async def test_gateway_faults_are_not_json(devidp: DevIdp, status: int) -> None:
    await devidp.fault("logout", status=status)
    reply = await devidp.logout("whatever")
    assert reply.status == status
    with pytest.raises(ValueError):
        reply.json()


async def test_fault_count_and_verbatim_body(devidp: DevIdp) -> None:
    login = await devidp.login()
    await devidp.fault("verify", status=200, body='{"access_token": "tru', count=2)
    for _ in range(2):
        reply = await devidp.verify(login.code, verifier=login.verifier)
        assert (reply.status, reply.text) == (200, '{"access_token": "tru')
    # The code was never touched by the faulted calls.
    assert (await devidp.verify(login.code, verifier=login.verifier)).status == 200


async def test_status_zero_drops_the_connection(devidp: DevIdp) -> None:
    await devidp.fault("userinfo", status=0)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await devidp.userinfo("token")
    assert (await devidp.userinfo("token")).json()["errorCode"] == "tokenInvalid"


async def test_delay_fault_makes_clients_time_out(devidp: DevIdp) -> None:
    await devidp.fault("userinfo", delay=0.5, status=503)
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await devidp.call("POST", "/api/v1/userinfo", data=b"t", timeout=aiohttp.ClientTimeout(total=0.1))
    assert time.monotonic() - started < 0.5


async def test_delay_without_status_delays_the_normal_answer(devidp: DevIdp) -> None:
    tokens = await devidp.sign_in()
    await devidp.fault("userinfo", delay=0.2)
    started = time.monotonic()
    reply = await devidp.userinfo(tokens.access_token)
    assert reply.status == 200
    assert time.monotonic() - started >= 0.2


async def test_faults_are_listed_and_cleared(devidp: DevIdp) -> None:
    await devidp.fault("userinfo", status=503, count=3)
    await devidp.fault("logout", status=0)
    pending = await devidp.control("GET", "/faults")
    assert sorted((fault["endpoint"], fault["status"], fault["count"]) for fault in pending) == [
        ("logout", 0, 1),
        ("userinfo", 503, 3),
    ]
    assert await devidp.control("DELETE", "/faults") == []
    assert await devidp.control("GET", "/faults") == []
    assert (await devidp.userinfo("token")).status == 400


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"endpoint": "login", "status": 503}',
        b'{"endpoint": "userinfo", "status": 700}',
        b'{"endpoint": "userinfo", "status": true}',
        b'{"endpoint": "userinfo", "status": 503, "count": 0}',
        b'{"endpoint": "userinfo", "delay": -1}',
        b'{"endpoint": "userinfo", "status": 200}',
        b'{"endpoint": "userinfo", "status": 503, "colour": "red"}',
        b'{"endpoint": "userinfo", "body": 5}',
        b'{"endpoint": "userinfo", "content_type": "text/html; charset=utf-8"}',
    ],
)
async def test_bad_fault_requests_are_refused(devidp: DevIdp, body: bytes) -> None:
    reply = await devidp.call("POST", "/_devidp/faults", data=body)
    assert (reply.status, reply.json()["errorCode"]) == (400, "entityInvalid")
    assert await devidp.control("GET", "/faults") == []


async def test_stats_count_every_call_including_faulted_and_failed_ones(devidp: DevIdp) -> None:
    tokens = await devidp.sign_in()
    await devidp.userinfo(tokens.access_token)
    await devidp.userinfo("garbage")
    await devidp.fault("userinfo", status=503)
    await devidp.userinfo(tokens.access_token)
    await devidp.logout(tokens.access_token)
    await devidp.call("GET", "/api/v1/userinfo")
    assert await devidp.stats() == {"userinfo": 3, "verify": 1, "logout": 1, "login": 1}
    assert await devidp.control("DELETE", "/stats") == {"userinfo": 0, "verify": 0, "logout": 0, "login": 0}


async def test_recorded_requests_show_what_the_relying_party_sent(devidp: DevIdp) -> None:
    tokens = await devidp.sign_in()
    await devidp.userinfo(tokens.access_token, ip=BROWSER_IP)
    await devidp.call("POST", "/api/v1/logout", data=b"\xff\xfe", headers={"Authorization": basic()})
    verify, userinfo, logout = await devidp.recorded()
    assert (verify["method"], verify["path"]) == ("POST", "/api/v1/verify")
    assert "code_verifier" in verify["body"]
    assert verify["headers"]["user-agent"] == "node"
    assert userinfo["query"] == {"domain": APP}
    assert userinfo["query_string"] == "domain=https://app.example.com"
    assert userinfo["headers"]["auth-ip"] == BROWSER_IP
    assert userinfo["headers"]["authorization"] == basic()
    assert logout["body"] == "\ufffd\ufffd"
    assert await devidp.control("DELETE", "/requests") == []
    assert await devidp.recorded() == []


def test_request_log_keeps_only_the_latest_requests() -> None:
    recorder = Recorder(capacity=3)
    for number in range(5):
        recorder.record(make_mocked_request("POST", f"/api/v1/userinfo?n={number}"), b"t", 0.0)
    assert [item["query"] for item in recorder.requests] == [{"n": "2"}, {"n": "3"}, {"n": "4"}]
    assert DEFAULT_CAPACITY == 1000


async def test_clock_moves_forward_only(devidp: DevIdp) -> None:
    before = await devidp.control("GET", "/clock")
    after = await devidp.advance(86400)
    assert after["offset"] == before["offset"] + 86400
    assert after["now"][:10] > before["now"][:10]
    for body in (b'{"advance": -5}', b'{"advance": "1"}', b'{"advance": true}', b"{}", b"nope"):
        reply = await devidp.call("POST", "/_devidp/clock", data=body)
        assert (reply.status, reply.json()["errorCode"]) == (400, "entityInvalid")


async def test_settings_are_shown_without_the_secret_and_changed_by_camel_case_name(devidp: DevIdp) -> None:
    shown = await devidp.control("GET", "/settings")
    assert "clientSecret" not in shown
    assert shown["clientId"] == CLIENT_ID
    assert shown["hijackProtection"] is True
    changed = await devidp.patch_settings(
        maxSessionTime=60, whitelistItems=[{"value": "https://new.example.com"}, "https://*.x.example.com"]
    )
    assert changed["maxSessionTime"] == 60
    assert changed["whitelistItems"] == [
        {"value": "https://new.example.com"},
        {"value": "https://*.x.example.com"},
    ]
    assert devidp.settings.max_session_time == 60


@pytest.mark.parametrize(
    "changes",
    [
        {"maxSessionTime": -1},
        {"maxSessionTime": "60"},
        {"autoLogin": 1},
        {"whitelistItems": ["not an origin"]},
        {"clientSecret": "short"},
        {"appRegistrations": [{"type": "tv", "bundleId": "x", "appLink": "https://a.example.com"}]},
        {"appRegistrations": [{"type": "mobile"}]},
        {"nonsense": True},
    ],
)
async def test_bad_settings_changes_are_refused_and_change_nothing(
    devidp: DevIdp, changes: dict[str, Any]
) -> None:
    before = await devidp.control("GET", "/settings")
    reply = await devidp.call("PATCH", "/_devidp/settings", json=changes)
    assert (reply.status, reply.json()["errorCode"]) == (400, "entityInvalid")
    assert await devidp.control("GET", "/settings") == before


async def test_reset_forgets_everything_but_the_settings(devidp: DevIdp) -> None:
    await devidp.patch_settings(maxInactivityTime=30)
    tokens = await devidp.sign_in()
    await devidp.fault("userinfo", status=503)
    await devidp.advance(10)
    await devidp.control("POST", "/reset")
    assert await devidp.control("GET", "/users") == []
    assert await devidp.control("GET", "/faults") == []
    assert await devidp.stats() == {"userinfo": 0, "verify": 0, "logout": 0, "login": 0}
    assert (await devidp.control("GET", "/clock"))["offset"] == 0
    assert (await devidp.userinfo(tokens.access_token)).json()["errorCode"] == "sessionMissing"
    assert (await devidp.control("GET", "/settings"))["maxInactivityTime"] == 30


async def test_unknown_control_route_is_a_json_404(devidp: DevIdp) -> None:
    reply = await devidp.call("GET", "/_devidp/nope")
    assert (reply.status, reply.json()["errorCode"]) == (404, "entityMissing")

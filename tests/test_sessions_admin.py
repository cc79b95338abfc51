"""`authproxy sessions list|revoke`, run as the operator runs it (a real process), against three proxy
replicas sharing one real redis-server.

A revocation by user ends every session of that user on all three replicas within a second of the
command's exit, closes their open websockets, and leaves other users alone; by id it ends one session;
with --centralauth the CentralAuth sessions end too. Listing shows ids, users and times, and never a
token or a cookie value. Each action is an audit event. Bad input and outages are one line each.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import CLIENT_ID, CLIENT_SECRET, DevIdp, ReplicaFactory
from support.harness import BROWSER_UA, COOKIE_SECRET, Proxy, free_port
from support.logins import SignedIn, signed_in
from support.redis_server import RedisServer
from support.served import to_toml

API = {"Accept": "application/json", "User-Agent": BROWSER_UA}


@pytest.fixture
async def three(redis_replicas: ReplicaFactory) -> list[Proxy]:
    return await redis_replicas(60)


def config_file(directory: Path, devidp: DevIdp, redis_url: str, **session: Any) -> Path:
    path = directory / "admin.toml"
    path.write_text(
        to_toml(
            {
                "server": {"listen": "127.0.0.1:4180", "public_url": "http://127.0.0.1:4180"},
                "centralauth": {
                    "base_url": devidp.url,
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                },
                "session": {
                    "cookie_secrets": [COOKIE_SECRET],
                    "cookie_secure": False,
                    "store": "redis",
                    "redis_url": redis_url,
                    **session,
                },
                "upstreams": [{"path": "/", "url": "http://127.0.0.1:9"}],
                "logging": {"format": "json"},
            }
        )
    )
    return path


async def sessions(*args: str) -> tuple[int, str, str]:
    """`authproxy sessions ARGS` as a process: exit status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "authproxy", "sessions", *args, stdout=-1, stderr=-1
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def status(proxy: Proxy, session: SignedIn) -> int:
    async with aiohttp.ClientSession(headers=API) as http:
        async with http.get(f"{proxy.url}/x", headers={"Cookie": session.header}) as response:
            return response.status


def audit_events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{") and '"audit"' in line]


async def test_list_shows_who_and_when_and_never_a_secret(
    three: list[Proxy], devidp: DevIdp, redis_server: RedisServer, tmp_path: Path
) -> None:
    ada = await signed_in(three[0])
    ada_again = await signed_in(three[1])
    bob = await signed_in(three[2], email="bob@example.com")
    path = config_file(tmp_path, devidp, redis_server.url)
    code, out, err = await sessions("-c", str(path), "list", "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert sorted(entry["user"] for entry in listed) == [
        "ada@example.com",
        "ada@example.com",
        "bob@example.com",
    ]
    for entry in listed:
        assert set(entry) == {"id", "user", "user_id", "created", "last_check", "expires"}
        assert len(entry["id"]) == 32
        assert entry["created"] <= time.time() < entry["expires"]
        assert entry["last_check"] is not None  # the landing request was checked with CentralAuth
    for secret in (ada, ada_again, bob):
        assert secret.token not in out + err and secret.value not in out + err
    assert [e["event"] for e in audit_events(err)] == ["admin.sessions_listed"]
    code, out, _ = await sessions("-c", str(path), "list", "--user", "ADA@example.com")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["ID", "USER", "CREATED", "LAST", "CHECK", "EXPIRES"]
    assert len(lines) == 3 and all("ada@example.com" in line for line in lines[1:])


async def test_revoke_user_ends_every_session_everywhere_within_a_second_and_closes_websockets(
    three: list[Proxy], devidp: DevIdp, redis_server: RedisServer, tmp_path: Path
) -> None:
    ada = await signed_in(three[0])
    ada_again = await signed_in(three[1])
    bob = await signed_in(three[2], email="bob@example.com")
    for proxy in three:
        for session in (ada, ada_again, bob):
            assert await status(proxy, session) == 200  # each replica has the answers cached
    async with aiohttp.ClientSession(headers={"User-Agent": BROWSER_UA}) as http:
        sockets = [
            await http.ws_connect(
                f"{proxy.url}/_ws", headers={"Cookie": session.header, "Origin": three[0].url}
            )
            for proxy in three
            for session in (ada, bob)
        ]
        path = config_file(tmp_path, devidp, redis_server.url)
        code, out, err = await sessions("-c", str(path), "revoke", "--user", "ada@example.com")
        exited = time.monotonic()
        assert code == 0, err
        assert out.strip() == "revoked 2 sessions"
        revoked = [e for e in audit_events(err) if e["event"] == "admin.session_revoked"]
        assert len(revoked) == 2 and {e["by"] for e in revoked} == {"cli"}
        # Ada's websockets are closed on every replica (policy violation: the session ended) ...
        for ws in sockets[0::2]:
            message = await asyncio.wait_for(ws.receive(), 1.0)
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
            assert ws.close_code == 1008
        # ... and each of her cookies is refused everywhere, all within a second of the exit.
        for proxy in three:
            for session in (ada, ada_again):
                assert await status(proxy, session) == 401
        assert time.monotonic() - exited < 1.0
        # Bob is untouched.
        for ws in sockets[1::2]:
            await ws.send_str("still here")
            assert (await asyncio.wait_for(ws.receive(), 2)).data == "still here"
            await ws.close()
        for proxy in three:
            assert await status(proxy, bob) == 200
    # CentralAuth was not asked to end Ada's sessions (no --centralauth).
    assert all(
        s["active"] for s in await devidp.control("GET", "/sessions") if s["email"] == "ada@example.com"
    )
    code, out, _ = await sessions("-c", str(path), "list", "--json")
    assert [entry["user"] for entry in json.loads(out)] == ["bob@example.com"]


async def test_revoke_by_id_and_at_centralauth(
    three: list[Proxy], devidp: DevIdp, redis_server: RedisServer, tmp_path: Path
) -> None:
    ada = await signed_in(three[0])
    bob = await signed_in(three[1], email="bob@example.com")
    path = config_file(tmp_path, devidp, redis_server.url)
    _, out, _ = await sessions("-c", str(path), "list", "--json")
    bob_id = next(entry["id"] for entry in json.loads(out) if entry["user"] == "bob@example.com")
    code, out, err = await sessions("-c", str(path), "revoke", "--id", bob_id, "--centralauth")
    assert code == 0, err
    assert out.splitlines() == ["revoked 1 session", "ended 1 CentralAuth session"]
    assert await status(three[2], bob) == 401 and await status(three[2], ada) == 200
    states = {s["email"]: s["active"] for s in await devidp.control("GET", "/sessions")}
    assert states == {"ada@example.com": True, "bob@example.com": False}
    assert (await devidp.stats())["logout"] == 1
    code, _, err = await sessions("-c", str(path), "revoke", "--id", bob_id)
    assert code == 1 and err.strip() == f"authproxy sessions: no session with id {bob_id}"
    code, out, err = await sessions("-c", str(path), "revoke", "--all")
    assert (code, out.strip()) == (0, "revoked 1 session")
    assert await status(three[0], ada) == 401


async def test_bad_input_and_outages_are_one_line(devidp: DevIdp, tmp_path: Path) -> None:
    cookie_store = config_file(tmp_path, devidp, "redis://127.0.0.1:1/0", store="cookie")
    code, _, err = await sessions("-c", str(cookie_store), "list")
    assert code == 2 and err.startswith("session.store: ") and len(err.splitlines()) == 1
    nowhere = config_file(tmp_path, devidp, f"redis://127.0.0.1:{free_port()}/0")
    for args in (["list"], ["revoke", "--all"]):
        code, out, err = await sessions("-c", str(nowhere), *args)
        assert code == 1 and out == "" and "Traceback" not in err
        assert err.strip().startswith("authproxy sessions: redis unreachable")
    code, _, err = await sessions("-c", str(tmp_path / "missing.toml"), "list")
    assert code == 2 and "Traceback" not in err
    code, _, err = await sessions("-c", str(nowhere), "revoke")
    assert code == 2 and "one of the arguments --user --id --all is required" in err

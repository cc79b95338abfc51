"""Highly available Redis for the session store, against real servers: Redis Sentinel with a failover,
ACL credentials and TLS; and the `[session]` keys that configure them.

- Sentinel: three proxies ask three sentinels for the master (password-protected, db 3 from
  `redis_url`); killing the master (SIGKILL) under load gets the replica promoted; meanwhile every
  answer is a 200 or a 503, never a logout; service resumes within a second of the promotion; every
  revocation listener resubscribes on the new master by itself, and a sign-out on one proxy after the
  failover reaches the others through the new master's pub/sub.
- ACL: the right user and password work; a wrong password is a 503 at `/ready` and on a request, with
  no traceback.
- TLS: `rediss://` with `redis_ca_file` works; a CA that did not sign the server's certificate fails the
  same clean way.
- Config: each key's error names it and `check-config` exits 2; a password never appears in a message.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import ClientSession
from conftest import DevIdp, ProxyFactory
from support.chaos import LogCheck
from support.harness import BROWSER_UA, Proxy
from support.logins import signed_in
from support.redis_server import REDIS_SERVER
from support.sentinel import MASTER, RedisNode, SentinelGroup
from support.tlsnginx import make_pki

from authproxy import cli
from authproxy.runtime import LIVE
from authproxy.session.redis import CHANNEL, KEY_PREFIX
from authproxy.session.redis_checks import ANSWER_PREFIX

API = {"Accept": "application/json", "User-Agent": BROWSER_UA}
PASSWORD = "s3ntinel-test-password-9f2c1a"


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path / "redis", password=PASSWORD)
    group.start()
    yield group
    group.stop()


async def status_with(proxy: Proxy, cookie: str) -> int:
    async with ClientSession(headers=API) as http:
        async with http.get(f"{proxy.url}/x", headers={"Cookie": cookie}) as response:
            return response.status


async def eventually(condition: Callable[[], Awaitable[bool]], what: str, within: float = 20) -> None:
    """Poll `condition()` every 50 ms until it is true, for at most `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


async def redis_503(proxy: Proxy, cookie: str) -> None:
    """Redis refused or unreachable: a 503 page naming the session store, and `/ready` 503 on redis."""
    async with ClientSession() as http:
        async with http.get(f"{proxy.url}/x", headers={"Cookie": cookie, "Accept": "text/html"}) as response:
            assert response.status == 503
            assert "session store is unavailable" in await response.text()
        async with http.get(f"{proxy.url}/ready") as response:
            assert response.status == 503
            assert "redis: unreachable" in await response.text()


# --- Sentinel ------------------------------------------------------------------------------------------


async def test_a_failover_under_load_logs_nobody_out_and_revocation_still_reaches_every_instance(
    proxy_factory: ProxyFactory, sentinel_group: SentinelGroup, logs: LogCheck, devidp: DevIdp
) -> None:
    settings = {
        "session": {
            "store": "redis",
            "redis_sentinels": sentinel_group.sentinels,
            "redis_sentinel_master": MASTER,
            # With sentinels the URL gives only the scheme and the db; the password goes to Redis only.
            "redis_url": "redis://unused.invalid:1/3",
            "redis_password": PASSWORD,
        },
        "centralauth": {"session_check_ttl": 60},
    }
    first = await proxy_factory(**settings)
    instances = [
        first,
        *[await proxy_factory(**settings, server={"public_url": first.url}) for _ in range(2)],
    ]
    users = [await signed_in(first, email=f"user{n}@example.com") for n in range(3)]
    for proxy in instances:
        for user in users:
            assert await status_with(proxy, user.header) == 200

    # The sessions are on the replica before the master dies (WAIT: acknowledged by one replica).
    old_master = aioredis.Redis(host="127.0.0.1", port=sentinel_group.master.port, password=PASSWORD)
    try:
        assert await old_master.wait(1, 5000) >= 1
    finally:
        await old_master.aclose()
    replica = aioredis.Redis(host="127.0.0.1", port=sentinel_group.replica.port, db=3, password=PASSWORD)
    answers: list[tuple[float, int]] = []  # (loop time, status) of every request of the load
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    async def load() -> None:
        async with ClientSession(headers=API) as http:
            while not stop.is_set():
                for proxy in instances:
                    for user in users:
                        async with http.get(f"{proxy.url}/x", headers={"Cookie": user.header}) as response:
                            await response.read()
                            answers.append((loop.time(), response.status))
                await asyncio.sleep(0.01)

    try:
        assert [key async for key in replica.scan_iter(match=KEY_PREFIX + "*")], "not replicated"
        loading = asyncio.ensure_future(load())
        await asyncio.sleep(0.5)
        killed = loop.time()
        sentinel_group.master.kill()
        await asyncio.to_thread(sentinel_group.wait_for, sentinel_group.promoted, "the replica's promotion")
        promoted = loop.time()
        await asyncio.sleep(2.0)  # the load goes on after the promotion
        stop.set()
        await loading

        # Nobody was logged out: every answer was a 200, or a 503 while there was no master.
        statuses = {status for _, status in answers}
        assert statuses <= {200, 503}, statuses
        failed = [at for at, status in answers if status == 503]
        # ... and service resumed once the sentinels had promoted the replica: the last 503 comes
        # within a second of the promotion (the time the proxies' connections take to find it).
        assert not failed or failed[-1] < promoted + 1.0, (failed[-1] - promoted, promoted - killed)
        after = [status for at, status in answers if at > promoted + 1.0]
        assert after and set(after) == {200}
        assert len([at for at, _ in answers if at < killed]) > 10  # the load really ran before the kill

        # Every revocation listener found the new master by itself ...
        async def all_listening() -> bool:
            numsub = await replica.pubsub_numsub(CHANNEL)
            return bool(numsub and numsub[0][1] >= len(instances))

        await eventually(all_listening, "every instance to subscribe on the new master")
        checkers = [proxy.app[LIVE].runtime.checker for proxy in instances[1:]]
        assert all(len(checker) == len(users) for checker in checkers)

        # The shared check cache works on the new master: a session signed in now (no request checked
        # yet) is asked about once, the answer stored there, and the other instances take it from it.
        late = await signed_in(first, email="late@example.com", path="/landing", land=False)
        before = len(await replica.keys(ANSWER_PREFIX + "*"))
        calls = (await devidp.stats())["userinfo"]
        for proxy in instances:
            assert await status_with(proxy, late.header) == 200
        assert (await devidp.stats())["userinfo"] - calls == 1
        assert len(await replica.keys(ANSWER_PREFIX + "*")) == before + 1

        # ... so a sign-out on the first instance reaches the other two at once.
        sizes = [len(checker) for checker in checkers]
        async with ClientSession(headers={"User-Agent": BROWSER_UA}) as http:
            async with http.post(
                f"{first.url}/oauth2/sign_out",
                headers={"Cookie": users[0].header, "Origin": first.url},
                allow_redirects=False,
            ) as response:
                assert response.status == 302

        async def evicted() -> bool:
            return all(len(checker) == size - 1 for checker, size in zip(checkers, sizes, strict=True))

        await eventually(evicted, "the sign-out broadcast to reach every instance", within=5)
        for proxy in instances:
            assert await status_with(proxy, users[0].header) == 401
            assert await status_with(proxy, users[1].header) == 200
    finally:
        await replica.aclose()
    logs.assert_clean()


# --- ACL -----------------------------------------------------------------------------------------------


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[RedisNode]:
    node = RedisNode(
        tmp_path / "acl",
        "--requirepass", "default-user-password-unused-1234",
        # The permissions the README's `redis_username` row gives, and no more.
        "--user", "authproxy", "on", f">{PASSWORD}", "~authproxy:*", "&authproxy:*", "+@read", "+@write",
        "+@keyspace", "+@pubsub", "+@scripting", "+@transaction", "+@connection",
    )  # fmt: skip
    node.start()
    yield node
    node.stop()


async def test_acl_credentials_work_and_a_wrong_password_is_a_clean_503(
    proxy_factory: ProxyFactory, acl_redis: RedisNode, tmp_path: Path, logs: LogCheck
) -> None:
    url = f"redis://127.0.0.1:{acl_redis.port}/0"
    password_file = tmp_path / "redis_password"
    password_file.write_text(PASSWORD + "\n", encoding="utf-8")
    right = await proxy_factory(
        session={
            "store": "redis",
            "redis_url": url,
            "redis_username": "authproxy",
            "redis_password_file": str(password_file),
        }
    )
    ada = await signed_in(right)
    assert await status_with(right, ada.header) == 200
    async with ClientSession() as http, http.get(f"{right.url}/ready") as response:
        assert response.status == 200
    # Everything the proxy does in Redis works with just these permissions: the shared check answer
    # (lock, answer, unlock script), the session index and its "last check" (script), and a sign-out's
    # dead-token record and broadcast.
    with redis.Redis(port=acl_redis.port, username="authproxy", password=PASSWORD) as admin:
        assert admin.keys("authproxy:check:*") and not admin.keys("authproxy:check-lock:*")
        (meta,) = admin.keys("authproxy:meta:*")
        assert admin.hget(meta, "last_check")
    async with ClientSession(headers={"User-Agent": BROWSER_UA}) as http:
        async with http.post(
            f"{right.url}/oauth2/sign_out",
            headers={"Cookie": ada.header, "Origin": right.url},
            allow_redirects=False,
        ) as response:
            assert response.status == 302
    with redis.Redis(port=acl_redis.port, username="authproxy", password=PASSWORD) as admin:
        assert admin.keys("authproxy:dead:*") and not admin.keys("authproxy:meta:*")
    ada = await signed_in(right)

    wrong = await proxy_factory(
        session={
            "store": "redis",
            "redis_url": url,
            "redis_username": "authproxy",
            "redis_password": "not-the-password-at-all",
        }
    )
    await redis_503(wrong, ada.header)
    logs.assert_clean()


# --- TLS -----------------------------------------------------------------------------------------------


def _redis_has_tls() -> bool:
    try:
        result = subprocess.run(
            [REDIS_SERVER, "--port", "0", "--tls-port", "1", "--tls-cert-file", "/nonexistent"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    output = result.stdout + result.stderr
    # A build without TLS refuses the option; one with it complains about the missing key file.
    return b"Failed to configure TLS" in output


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[RedisNode, Path]]:
    if not _redis_has_tls():
        pytest.skip("this machine's redis-server was built without TLS (BUILD_TLS=no): rediss:// is untested")
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    node = RedisNode(tmp_path / "tls")
    node.args = (
        "--port", "0",
        "--tls-port", str(node.port),
        "--tls-cert-file", str(pki / "server.pem"),
        "--tls-key-file", str(pki / "server.key"),
        "--tls-ca-cert-file", str(pki / "server-ca.pem"),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    node.start()
    yield node, pki
    node.stop()


async def test_rediss_with_the_right_ca_works_and_a_wrong_ca_is_a_clean_503(
    proxy_factory: ProxyFactory, tls_redis: tuple[RedisNode, Path], logs: LogCheck
) -> None:
    node, pki = tls_redis
    url = f"rediss://127.0.0.1:{node.port}/0"
    right = await proxy_factory(
        session={"store": "redis", "redis_url": url, "redis_ca_file": str(pki / "server-ca.pem")}
    )
    ada = await signed_in(right)
    assert await status_with(right, ada.header) == 200
    wrong = await proxy_factory(
        session={"store": "redis", "redis_url": url, "redis_ca_file": str(pki / "client-ca.pem")}
    )
    await redis_503(wrong, ada.header)
    logs.assert_clean()


# --- configuration -------------------------------------------------------------------------------------

VALID = """
[server]
listen = "127.0.0.1:4180"
public_url = "https://app.example.com"

[centralauth]
client_id = "3f1c2a9e-7b4d-4e8a-9c61-0d2b5e8f7a10"
client_secret = "5d41402abc4b2a76b9719d911017c5927e240de74eb0ad2b58bd5a1c2f7b3e91"

[session]
store = "redis"
cookie_secrets = ["Zq3vJ0b8kR2mX5nT7wY1pL4sD6fH9gA0cE3uI8oK2jM"]
{extra}

[[upstreams]]
url = "http://127.0.0.1:8080"
"""


def check(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str) -> tuple[int, str]:
    path = tmp_path / "config.toml"
    path.write_text(VALID.format(extra=extra), encoding="utf-8")
    capsys.readouterr()
    code = cli.main(["check-config", "-c", str(path)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and (code == 0 or out == "")
    return code, err


@pytest.mark.usefixtures("no_authproxy_env")
def test_sentinel_tls_and_acl_settings_are_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    extra = f"""redis_url = "rediss://ignored:6379/2"
redis_sentinels = ["10.0.0.1:26379", "[::1]:26380"]
redis_sentinel_master = "mymaster"
redis_ca_file = "{ca}"
redis_username = "authproxy"
redis_password = "{PASSWORD}"
"""
    code, err = check(tmp_path, capsys, extra)
    assert code == 0, err


@pytest.mark.usefixtures("no_authproxy_env")
@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('redis_sentinels = ["26379"]', "session.redis_sentinels[0]"),
        ('redis_sentinels = ["127.0.0.1:26379"]', "session.redis_sentinel_master"),
        ('redis_sentinel_master = "mymaster"', "session.redis_sentinels"),
        (
            'redis_sentinels = ["127.0.0.1:26379"]\nredis_sentinel_master = "my master"',
            "session.redis_sentinel_master",
        ),
        (
            'redis_sentinels = ["127.0.0.1:1"]\nredis_sentinel_master = "m"\nredis_url = "unix:///r.sock"',
            "session.redis_url",
        ),
        ('redis_url = "rediss://r:6380/0"\nredis_ca_file = "/nonexistent/ca.pem"', "session.redis_ca_file"),
        ('redis_ca_file = "{ca}"', "session.redis_ca_file"),  # redis:// takes no CA
        ('redis_password = "CHANGE-ME"', "session.redis_password"),
        ('redis_password_file = "/nonexistent/pw"', "session.redis_password_file"),
    ],
)
def test_a_bad_redis_setting_names_its_key_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, key: str
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    code, err = check(tmp_path, capsys, extra.replace("{ca}", str(ca)))
    assert code == 2
    assert err.splitlines()[0].startswith(f"{key}: "), err


@pytest.mark.usefixtures("no_authproxy_env")
def test_a_password_file_is_read_and_a_placeholder_in_it_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from authproxy.config import load

    password_file = tmp_path / "pw"
    password_file.write_text(f"{PASSWORD}\n", encoding="utf-8")
    config_path = tmp_path / "config.toml"
    config_path.write_text(VALID.format(extra=f'redis_password_file = "{password_file}"'), encoding="utf-8")
    assert load(config_path).session.redis_password.get_secret_value() == PASSWORD

    code, err = check(
        tmp_path, capsys, f'redis_password_file = "{password_file}"\nredis_password = "{PASSWORD}"'
    )
    assert code == 2 and err.startswith("session.redis_password: set redis_password or redis_password_file")
    assert PASSWORD not in err

    password_file.write_text("CHANGE-ME\n", encoding="utf-8")
    code, err = check(tmp_path, capsys, f'redis_password_file = "{password_file}"')
    assert code == 2
    assert err.splitlines() == [
        f"session.redis_password_file: {str(password_file)!r} holds a placeholder; put the Redis user's "
        "password in it"
    ]

"""Websockets through the proxy against real upstreams on loopback: the JupyterLab pattern (an HTTP API and
a kernel socket that check `Host` and `Origin`), upstream refusals passed through, the Origin check,
bounded messages with no compression, the per-worker limit, and a connection pool of their own; then
the registry of open connections and the re-check loop on their own.

Messages are bounded on both legs and compression is never negotiated: a 260 KB compressed frame that
inflated to a gigabyte, or a 20 MB message, now closes the socket (1002, 1009) with the process growing
by a few MiB at most; `rss_bytes` measures the whole test process, proxy included.
"""

from __future__ import annotations

import asyncio
import gc
import time

import aiohttp
import pytest
from aiohttp import WSMsgType
from conftest import DevIdp, ProxyFactory
from support.harness import BROWSER_UA, Browser, Proxy
from support.kernel import KernelState
from support.logins import signed_in
from support.rawws import (
    BINARY,
    CLOSE,
    RawClient,
    RawUpstream,
    deflate_bomb,
    frame_header,
    read_frame,
    rss_bytes,
)

from authproxy.app import reload
from authproxy.runtime import LIVE
from authproxy.watch import STREAM, WEBSOCKET, Connections, RegistryFull, Verdict, keep_checking, token_digest
from authproxy.websocket import origin_allowed

HANDSHAKE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}
EMAIL = "ada@example.com"
MiB = 1 << 20


def ws_url(proxy: Proxy, path: str) -> str:
    return proxy.url.replace("http://", "ws://") + path


# --- the JupyterLab pattern: Host, Origin, and the kernel's own refusal ------------------------------------


async def test_preserve_host_reaches_the_kernel_socket_as_it_reaches_the_api(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str], browser: Browser
) -> None:
    state, url = kernel
    proxy = await proxy_factory(upstreams=[{"url": url, "preserve_host": True}])
    host = proxy.url.removeprefix("http://")
    state.expected_host = host
    await signed_in(proxy, browser)
    async with browser.http.get(f"{proxy.url}/api/status") as response:
        assert response.status == 200
        assert await response.json() == {"host": host, "user": EMAIL}
    async with browser.http.ws_connect(ws_url(proxy, "/api/kernels/k1/channels"), origin=proxy.url) as ws:
        await ws.send_str("execute:1+1")
        assert await ws.receive_str(timeout=5) == "result:1+1"
    (handshake,) = state.handshakes
    assert handshake["Host"] == host
    assert handshake["Origin"] == proxy.url
    assert handshake["X-Forwarded-Email"] == EMAIL and handshake["X-Forwarded-User"]
    assert "Sec-WebSocket-Extensions" not in handshake  # compression is never offered upstream
    assert "_authproxy" not in handshake.get("Cookie", "")


async def test_without_preserve_host_the_upstream_host_is_sent(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str]
) -> None:
    state, url = kernel
    proxy = await proxy_factory(
        upstreams=[{"url": url, "preserve_host": False}], routes={"skip_auth": ["^/api/"]}
    )
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(proxy, "/api/kernels/k1/channels")) as ws,
    ):
        await ws.send_str("execute:x")
        assert await ws.receive_str(timeout=5) == "result:x"
    assert state.handshakes[0]["Host"] == url.removeprefix("http://")


async def test_by_default_the_browser_host_reaches_the_kernel_socket(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str]
) -> None:
    state, url = kernel
    proxy = await proxy_factory(upstreams=[{"url": url}], routes={"skip_auth": ["^/api/"]})
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(proxy, "/api/kernels/k1/channels")) as ws,
    ):
        await ws.send_str("execute:x")
        assert await ws.receive_str(timeout=5) == "result:x"
    assert state.handshakes[0]["Host"] == proxy.url.removeprefix("http://")


async def test_the_kernels_refusal_reaches_the_browser_as_it_was_sent(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str], browser: Browser
) -> None:
    """JupyterLab behind a proxy that does not preserve Host refuses the socket (the Origin is not its
    host): the browser must see that 403 and its reason, not a 502 that blames the proxy."""
    _, url = kernel
    proxy = await proxy_factory(upstreams=[{"url": url, "preserve_host": False}])
    await signed_in(proxy, browser)
    headers = {**HANDSHAKE, "Origin": proxy.url}
    async with browser.http.get(f"{proxy.url}/api/kernels/k1/channels", headers=headers) as response:
        assert response.status == 403
        assert response.headers["Content-Type"].startswith("application/json")
        body = await response.json()
        assert "X-Authproxy" not in response.headers  # the upstream's answer, not the proxy's page
    assert body["message"].startswith("Blocking Cross Origin WebSocket Attempt")
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await browser.http.ws_connect(ws_url(proxy, "/api/kernels/k1/channels"), origin=proxy.url)
    assert caught.value.status == 403


@pytest.mark.parametrize("code", [401, 403, 404, 200, 302, 503])
async def test_any_refusal_passes_through_with_its_headers_and_body(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str], code: int
) -> None:
    state, url = kernel
    proxy = await proxy_factory(upstreams=[{"url": url}], routes={"skip_auth": ["^/refuse/"]})
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{proxy.url}/refuse/{code}", headers=HANDSHAKE, allow_redirects=False
        ) as response:
            assert response.status == code
            assert response.headers["X-Kernel-Refusal"] == str(code)
            assert await response.json() == {"refused": code}
            if code == 401:
                assert response.headers["WWW-Authenticate"] == 'Bearer realm="kernel"'
            if code == 302:
                assert response.headers["Location"] == "/elsewhere"
    assert state.requests == [f"/refuse/{code}"]  # a redirect is passed on, never followed


async def test_a_large_refusal_body_is_cut_at_64_kib(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str]
) -> None:
    _, url = kernel
    proxy = await proxy_factory(upstreams=[{"url": url}], routes={"skip_auth": ["^/refuse/"]})
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy.url}/refuse/403?size=300000", headers=HANDSHAKE) as response:
            assert response.status == 403
            assert await response.read() == b"r" * 65536


async def test_a_silent_upstream_is_a_504_and_an_unreachable_one_a_502(proxy_factory: ProxyFactory) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # takes the handshake and never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        upstream = {"url": f"http://127.0.0.1:{port}", "timeout": 0.3, "connect_timeout": 0.3}
        proxy = await proxy_factory(upstreams=[upstream], routes={"skip_auth": ["^/"]})
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await http.ws_connect(ws_url(proxy, "/socket"))
            assert caught.value.status == 504
            assert time.monotonic() - started < 3
    finally:
        server.close()
        await server.wait_closed()
    # Nothing listens there any more.
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await http.ws_connect(ws_url(proxy, "/socket"))
        assert caught.value.status == 502
    assert len(proxy.app[LIVE].runtime.connections) == 0


# --- Origin ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origins", "allowed"),
    [
        ([], True),
        (["http://proxy.example"], True),
        (["HTTP://Proxy.Example:80"], True),
        (["https://app.example.com"], True),
        (["https://app.example.com:443"], True),
        (["https://evil.example"], False),
        (["http://proxy.example:8080"], False),
        (["https://proxy.example"], False),
        (["null"], False),
        (["http://proxy.example/path"], False),
        (["http://proxy.example?"], False),
        (["http://user@proxy.example"], False),
        (["http://proxy.example", "http://proxy.example"], False),
        ([""], False),
        (["http://[::1"], False),
    ],
)
def test_origin_rules(origins: list[str], allowed: bool) -> None:
    assert origin_allowed(origins, "http://proxy.example/base", ["https://app.example.com"]) is allowed


async def test_a_foreign_origin_is_refused_before_anything_is_spent_on_it(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str], browser: Browser, devidp: DevIdp
) -> None:
    state, url = kernel
    proxy = await proxy_factory(
        upstreams=[{"url": url, "preserve_host": True}],
        websocket={"allowed_origins": ["https://notebooks.example.com"]},
    )
    await signed_in(proxy, browser)
    await devidp.call("DELETE", "/_devidp/stats")
    channel = ws_url(proxy, "/api/kernels/k1/channels")
    for foreign in ("https://evil.example", "null"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await browser.http.ws_connect(channel, origin=foreign)
        assert caught.value.status == 403
    async with browser.http.get(
        f"{proxy.url}/api/kernels/k1/channels",
        headers={**HANDSHAKE, "Origin": "https://evil.example", "Accept": "application/json"},
    ) as response:
        assert response.status == 403
        assert (await response.json())["error"] == "websocket_origin"
    assert state.handshakes == []
    assert (await devidp.stats())["userinfo"] == 0
    state.check_origin = False  # JupyterLab's own check would refuse the other allowed origin
    for origin in (proxy.url, "https://notebooks.example.com", None):
        async with browser.http.ws_connect(channel, origin=origin) as ws:
            await ws.send_str("execute:ok")
            assert await ws.receive_str(timeout=5) == "result:ok"
    assert len(state.handshakes) == 3


# --- limits: open sockets per worker, and a connection pool apart from CentralAuth's -----------------------


async def test_beyond_max_open_a_handshake_gets_503(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str]
) -> None:
    _, url = kernel
    proxy = await proxy_factory(
        upstreams=[{"url": url}], routes={"skip_auth": ["^/"]}, websocket={"max_open": 3}
    )
    channel = ws_url(proxy, "/api/kernels/k1/channels")
    async with aiohttp.ClientSession() as http:
        sockets = [await http.ws_connect(channel) for _ in range(3)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await http.ws_connect(channel)
        assert caught.value.status == 503
        async with http.get(
            f"{proxy.url}/api/kernels/k1/channels", headers={**HANDSHAKE, "Accept": "application/json"}
        ) as response:
            assert response.status == 503
            assert (await response.json())["error"] == "websocket_limit"
        await sockets.pop().close()
        for _ in range(50):  # the slot is given back once the bridge has closed both legs
            if proxy.app[LIVE].runtime.connections.count("websocket") < 3:
                break
            await asyncio.sleep(0.02)
        sockets.append(await http.ws_connect(channel))
        await sockets[-1].send_str("still")
        assert await sockets[-1].receive_str(timeout=5) == "still"
        for ws in sockets:
            await ws.close()


async def test_600_open_websockets_do_not_starve_logins_or_session_checks(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str], browser: Browser, devidp: DevIdp
) -> None:
    """Websockets once shared CentralAuth's 512-connection pool: with 512 open, every sign-in and every
    uncached check waited for a connection and failed. They have their own pool now."""
    state, url = kernel
    proxy = await proxy_factory(upstreams=[{"url": url}], websocket={"max_open": 700})
    await signed_in(proxy, browser)
    channel = ws_url(proxy, "/api/kernels/k1/channels")
    # The browser's own session would allow only 100 connections at once.
    many = aiohttp.ClientSession(
        cookie_jar=browser.jar, headers={"User-Agent": BROWSER_UA}, connector=aiohttp.TCPConnector(limit=0)
    )
    sockets = await asyncio.gather(*(many.ws_connect(channel) for _ in range(600)))
    try:
        await state.wait_for(lambda: state.open_sockets == 600, within=30)
        assert proxy.app[LIVE].runtime.connections.count("websocket") == 600
        runtime = proxy.app[LIVE].runtime
        started = time.monotonic()
        newcomer = Browser()
        try:
            status, _, _ = await newcomer.login(f"{proxy.url}/", "grace@example.com")  # verify + userinfo
            assert status == 200
            # An uncached check: the cached answer is dropped, so this request asks CentralAuth again.
            session = await runtime.store.load(newcomer.cookie(runtime.cookie.name) or "")
            assert session is not None
            runtime.checker.evict(session.access_token)
            calls = (await devidp.stats())["userinfo"]
            async with newcomer.http.get(f"{proxy.url}/api/status") as response:
                assert response.status == 200
            assert (await devidp.stats())["userinfo"] == calls + 1
        finally:
            await newcomer.close()
        elapsed = time.monotonic() - started
        print(f"with 600 websockets open: a sign-in and an uncached check in {elapsed:.2f} s")
        assert elapsed < 5, f"a login and a check took {elapsed:.1f} s with 600 sockets open"
        await sockets[599].send_str("execute:still here")
        assert await sockets[599].receive_str(timeout=5) == "result:still here"
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))
        await many.close()


# --- bounded messages, no compression ----------------------------------------------------------------------


async def test_messages_up_to_the_limit_pass_and_a_larger_one_closes_with_1009(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str]
) -> None:
    state, url = kernel
    limit = 64 * 1024
    proxy = await proxy_factory(
        upstreams=[{"url": url}], routes={"skip_auth": ["^/"]}, websocket={"max_message_size": limit}
    )
    channel = ws_url(proxy, "/api/kernels/k1/channels")
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(channel, max_msg_size=0) as ws:
            await ws.send_bytes(b"c" * limit)
            assert await ws.receive_bytes(timeout=5) == b"c" * limit
            await ws.send_str(f"send:{limit}")
            assert await ws.receive_bytes(timeout=5) == b"k" * limit
            # Client to upstream, one byte over.
            await ws.send_bytes(b"c" * (limit + 1))
            message = await ws.receive(timeout=5)
            assert message.type == WSMsgType.CLOSE and message.data == 1009
        await state.wait_for(lambda: len(state.closes) == 1)
        assert state.closes == [1009]  # the upstream leg closed too, with the same code
        async with http.ws_connect(channel, max_msg_size=0) as ws:
            # Upstream to client, one byte over.
            await ws.send_str(f"send:{limit + 1}")
            message = await ws.receive(timeout=5)
            assert message.type == WSMsgType.CLOSE and message.data == 1009
        await state.wait_for(lambda: len(state.closes) == 2)
        assert state.closes[1] == 1009


class Peak:
    """The highest RSS seen while a test runs, sampled every 5 ms."""

    def __init__(self) -> None:
        gc.collect()
        self.before = rss_bytes()
        self.peak = self.before
        self._task = asyncio.ensure_future(self._sample())

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes())
            await asyncio.sleep(0.005)

    async def growth(self) -> float:
        self.peak = max(self.peak, rss_bytes())
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return (self.peak - self.before) / MiB


async def test_a_compressed_frame_is_refused_and_never_inflated(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str]
) -> None:
    """A 260 KB permessage-deflate frame of 256 MiB of zeros, sent although no compression was agreed,
    and even though the client offered it: the proxy answers without the extension, closes with 1002,
    relays nothing, and the process does not grow."""
    state, url = kernel
    proxy = await proxy_factory(upstreams=[{"url": url}], routes={"skip_auth": ["^/"]})
    bomb = deflate_bomb(256 * MiB)
    assert len(bomb) < 300_000
    client = await RawClient.connect(
        ws_url(proxy, "/api/kernels/k1/channels"),
        {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"},
    )
    try:
        assert "sec-websocket-extensions" not in client.headers
        await state.wait_for(lambda: state.open_sockets == 1)
        peak = Peak()
        await client.send(BINARY, bomb, rsv1=True)
        reply = await asyncio.wait_for(read_frame(client.reader), 5)
        grown = await peak.growth()
    finally:
        await client.close()
    print(f"compressed frame of {len(bomb)} bytes: RSS +{grown:.1f} MiB")
    assert reply.opcode == CLOSE and reply.close_code == 1002
    await state.wait_for(lambda: state.closes == [1002])
    assert state.messages == []
    assert grown < 50


async def test_a_20_mb_message_is_refused_at_its_header(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str]
) -> None:
    """The default limit is 16 MiB: a frame announcing 20 MB is refused before its payload is buffered,
    however long the client keeps sending it."""
    state, url = kernel
    proxy = await proxy_factory(upstreams=[{"url": url}], routes={"skip_auth": ["^/"]})
    client = await RawClient.connect(ws_url(proxy, "/api/kernels/k1/channels"))
    try:
        await state.wait_for(lambda: state.open_sockets == 1)
        peak = Peak()
        # Read while writing: once the proxy closes with data still unread, a reset may overtake it.
        replied = asyncio.ensure_future(read_frame(client.reader))
        sent = await client.trickle(BINARY, 20_000_000)
        reply = await asyncio.wait_for(replied, 5)
        grown = await peak.growth()
    finally:
        await client.close()
    print(f"20 MB message ({sent} bytes of it written): RSS +{grown:.1f} MiB")
    assert reply.opcode == CLOSE and reply.close_code == 1009
    await state.wait_for(lambda: state.closes == [1009])
    assert state.messages == []
    assert grown < 50


@pytest.mark.parametrize("kind", ["compressed", "20 MB"])
async def test_the_upstream_leg_is_bounded_too(proxy_factory: ProxyFactory, kind: str) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Read while writing: once the proxy closes with data still unread, a reset may overtake it.
        replied = asyncio.ensure_future(read_frame(reader))
        try:
            if kind == "compressed":
                writer.write(frame_header(BINARY, len(bomb), rsv1=True, mask=None) + bomb)
                await writer.drain()
            else:
                writer.write(frame_header(BINARY, 20_000_000, mask=None))
                block = b"u" * MiB
                for _ in range(20):
                    writer.write(block)
                    await asyncio.wait_for(writer.drain(), 2)
        except (ConnectionError, TimeoutError):
            pass
        closes.append((await replied).close_code)

    bomb = deflate_bomb(256 * MiB)
    closes: list[int | None] = []
    upstream = RawUpstream(script)
    url = await upstream.start()
    try:
        proxy = await proxy_factory(upstreams=[{"url": url}], routes={"skip_auth": ["^/"]})
        async with aiohttp.ClientSession() as http:
            peak = Peak()
            async with http.ws_connect(ws_url(proxy, "/socket"), max_msg_size=0) as ws:
                message = await ws.receive(timeout=10)
            grown = await peak.growth()
        await asyncio.wait_for(upstream.finished.wait(), 5)
    finally:
        await upstream.stop()
    print(f"{kind} message from the upstream: RSS +{grown:.1f} MiB")
    expected = 1002 if kind == "compressed" else 1009
    assert message.type == WSMsgType.CLOSE and message.data == expected
    assert closes == [expected]
    assert "sec-websocket-extensions" not in upstream.handshakes[0]
    assert grown < 50


# --- what the upstream leg carries -------------------------------------------------------------------------


async def test_the_handshake_carries_the_same_headers_as_a_request(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str], browser: Browser
) -> None:
    state, url = kernel
    proxy = await proxy_factory(upstreams=[{"url": url}], headers={"strip_extra": ["X-App-User"]})
    await signed_in(proxy, browser)
    forged = {"X-Forwarded-User": "admin", "X_Forwarded_Email": "admin@example.com", "X-App-User": "root"}
    async with browser.http.ws_connect(ws_url(proxy, "/api/kernels/k1/channels"), headers=forged) as ws:
        await ws.send_str("x")
        await ws.receive_str(timeout=5)
    (handshake,) = state.handshakes
    lowered = {name.lower(): value for name, value in handshake.items()}
    assert lowered["x-forwarded-email"] == EMAIL and lowered["x-forwarded-user"] != "admin"
    assert "x_forwarded_email" not in lowered and "x-app-user" not in lowered
    assert lowered["user-agent"] == BROWSER_UA
    assert lowered["x-forwarded-for"] == "127.0.0.1" and lowered["x-request-id"]


async def test_the_websocket_pool_is_not_centralauths(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str]
) -> None:
    _, url = kernel
    proxy = await proxy_factory(
        upstreams=[{"url": url}], routes={"skip_auth": ["^/"]}, websocket={"max_open": 5}
    )
    runtime = proxy.app[LIVE].runtime
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(ws_url(proxy, "/api/kernels/k1/channels")) as ws:
            await ws.send_str("x")
            await ws.receive_str(timeout=5)
            upstream = runtime.router.pick("/api/kernels/k1/channels")
            assert upstream is not None
            session = runtime.websockets.session(upstream)[0]
            assert session.connector is not None and session.connector.limit == 5
            # CentralAuth's calls go through a pool of their own, neither the websockets' nor the
            # upstreams' (test_600_open_websockets_do_not_starve_logins_or_session_checks shows it).
            assert runtime.provider.pool is runtime.backchannel
            assert runtime.backchannel is not runtime.pool


# --- the registry and the re-check loop on their own -------------------------------------------------------


async def test_the_registry_bounds_websockets_and_forgets_what_closed() -> None:
    connections = Connections()
    ada, grace = token_digest("ada-token"), token_digest("grace-token")
    first = connections.open(WEBSOCKET, ada, limit=2)
    anonymous = connections.open(WEBSOCKET, None, limit=2)
    with pytest.raises(RegistryFull):
        connections.open(WEBSOCKET, grace, limit=2)
    cuts: list[tuple[int, str]] = []
    stream = connections.open(STREAM, ada, on_end=lambda code, reason: cuts.append((code, reason)))
    assert (len(connections), connections.sessions()) == (3, 1)
    assert connections.end_session(ada, "signed out") == 2
    assert first.ended.result() == (1008, "signed out") and cuts == [(1008, "signed out")]
    assert not anonymous.ended.done()
    stream.end(1011, "later calls change nothing")
    assert cuts == [(1008, "signed out")]
    for connection in (first, first, stream):
        connections.close(connection)
    assert (len(connections), connections.sessions()) == (1, 0)
    connections.open(WEBSOCKET, grace, limit=2)  # a slot came back
    connections.end_all(1001, "shutdown")
    assert anonymous.ended.result() == (1001, "shutdown")


async def test_the_recheck_schedule_follows_where_the_answer_came_from() -> None:
    """A cached answer (of unknown age) is followed by a check a quarter TTL later; an answer CentralAuth
    just gave by one a whole TTL later, when it leaves the cache."""
    ttl = 0.4
    calls: list[float] = []
    verdicts = [Verdict(), Verdict(), Verdict(asked=True), Verdict(asked=True), Verdict("session ended")]

    async def check() -> Verdict:
        calls.append(asyncio.get_running_loop().time())
        return verdicts[len(calls) - 1]

    connection = Connections().open(WEBSOCKET, token_digest("t"))
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(keep_checking(connection, check, lambda: ttl), 5)
    assert connection.ended.result() == (1008, "session ended")
    gaps = [round(later - earlier, 2) for earlier, later in zip([started, *calls], calls, strict=False)]
    assert gaps[:3] == pytest.approx([ttl / 4] * 3, abs=0.05)  # after the handshake, and two cached answers
    assert gaps[3:] == pytest.approx([ttl] * 2, abs=0.06)  # after CentralAuth's own answers


async def test_deadlines_and_failures_end_the_connection() -> None:
    connection = Connections().open(WEBSOCKET, None)
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(keep_checking(connection, None, lambda: 30, [(loop.time() + 0.1, "too old")]), 2)
    assert connection.ended.result() == (1008, "too old")

    async def broken() -> Verdict:
        raise RuntimeError("a bug")

    connection = Connections().open(WEBSOCKET, token_digest("t"))
    await asyncio.wait_for(keep_checking(connection, broken, lambda: 0.1), 2)
    assert connection.ended.result() == (1011, "session check failed")


async def test_max_open_is_kept_until_a_restart(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(websocket={"max_open": 3})
    runtime = proxy.app[LIVE].runtime
    clients, connections = runtime.websocket_clients, runtime.connections
    changed = proxy.config.model_copy(
        update={"websocket": proxy.config.websocket.model_copy(update={"max_open": 10})}
    )
    assert reload(proxy.app, changed) == ["websocket.max_open"]
    fresh = proxy.app[LIVE].runtime
    assert fresh is not runtime
    assert fresh.config.websocket.max_open == 3
    # The open sockets, and the pool they hold, are the process's: a reload keeps both.
    assert fresh.websocket_clients is clients and fresh.connections is connections

"""The h1 client to an upstream on a Unix socket (`unix:///path/app.sock`), and how upstream URLs and
their TLS settings become origins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from support.rawupstream import Conn, RawUpstream, Request

from authproxy import h1

TIMEOUTS: dict[str, Any] = {"connect_timeout": 2.0, "response_timeout": 2.0, "read_timeout": 2.0}


async def test_a_raw_upstream_on_a_unix_socket(tmp_path: Path) -> None:
    async def answer(conn: Conn, request: Request) -> None:
        await conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    path = tmp_path / "app.sock"
    upstream = await RawUpstream(answer).start(unix_path=str(path))
    try:
        origin, prefix = h1.Origin.split(f"unix://{path}")
        assert (origin.unix_path, origin.host_header, prefix) == (str(path), "localhost", "")
        pool = h1.Pool()
        for target in ("/a", "/b"):
            response = await pool.request(origin, "GET", target, [], None, **TIMEOUTS)
            assert await response.read() == b"ok"
            response.release()
        assert [number for number, _ in upstream.seen] == [0, 0]  # kept alive like any other
        assert upstream.requests[0].head.startswith(b"GET /a HTTP/1.1\r\nHost: localhost\r\n")
        await pool.close()
    finally:
        await upstream.stop()


async def test_an_aiohttp_app_on_a_unix_socket(tmp_path: Path) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.host} {request.path_qs} {await request.text()}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    path = tmp_path / "aiohttp.sock"
    await web.UnixSite(runner, str(path)).start()
    try:

        class Body:
            def __init__(self) -> None:
                self.left = [b"up", b"load"]

            async def readany(self) -> bytes:
                return self.left.pop(0) if self.left else b""

        origin, _ = h1.Origin.split(f"unix://{path}")
        pool = h1.Pool()
        response = await pool.request(origin, "POST", "/x?y=1", [], Body(), **TIMEOUTS)
        body = b""
        while chunk := await response.read():
            body += chunk
        response.release()
        assert (response.status, body) == (200, b"hello localhost /x?y=1 upload")
        await pool.close()
    finally:
        await runner.cleanup()


async def test_a_missing_socket_is_refused(tmp_path: Path) -> None:
    origin, _ = h1.Origin.split(f"unix://{tmp_path}/nothing.sock")
    pool = h1.Pool()
    with pytest.raises(h1.UpstreamError) as caught:
        await pool.request(origin, "GET", "/", [], None, **TIMEOUTS)
    assert caught.value.kind == "refused" and "No such file" in caught.value.detail
    assert pool._count == 0
    await pool.close()


def test_origins_of_urls() -> None:
    origin, prefix = h1.Origin.split("https://app.internal/base/")
    assert (origin.host, origin.port, origin.tls, origin.host_header, prefix) == (
        "app.internal",
        443,
        True,
        "app.internal",
        "/base/",
    )
    origin, prefix = h1.Origin.split("http://127.0.0.1:8080")
    assert (origin.port, origin.tls, origin.host_header, prefix) == (8080, False, "127.0.0.1:8080", "")
    origin, _ = h1.Origin.split("http://[::1]:81/")
    assert (origin.host, origin.host_header) == ("::1", "[::1]:81")
    settings: dict[str, Any] = {
        "ca_file": "/ca.pem",
        "verify": True,
        "server_name": "app.test",
        "client_cert_file": "/c.pem",
        "client_key_file": "/c.key",
    }
    origin, _ = h1.Origin.split("https://10.0.0.1:8443", **settings)
    assert (origin.ca_file, origin.server_name, origin.client_cert_file) == ("/ca.pem", "app.test", "/c.pem")
    # Equal settings, equal origins (one pool of connections); any difference, another pool.
    same, _ = h1.Origin.split("https://10.0.0.1:8443/other", **settings)
    assert same == origin and hash(same) == hash(origin)
    for changed in ({"ca_file": ""}, {"server_name": "x.test"}, {"verify": False}):
        other, _ = h1.Origin.split("https://10.0.0.1:8443", **{**settings, **changed})
        assert other != origin


@pytest.mark.parametrize(
    ("url", "settings"),
    [
        ("ftp://host/", {}),
        ("/relative", {}),
        ("unix://relative.sock", {}),
        ("unix:///dir/", {}),
        ("unix:///app.sock?x", {}),
        ("http://host/", {"ca_file": "/ca.pem"}),
        ("http://host/", {"verify": False}),
        ("unix:///app.sock", {"server_name": "x"}),
        ("https://host/", {"client_cert_file": "/c.pem"}),
    ],
)
def test_urls_and_settings_that_are_refused(url: str, settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        h1.Origin.split(url, **settings)

"""The h1 client against a real TLS upstream (Debian's nginx) with a private CA made by the test:
verification against `ca_file` or the system store, `server_name` for SNI and the hostname check,
`verify=False`, client certificates for mutual TLS, typed errors that say why a handshake failed, and
pooled connections that never cross from one set of TLS settings to another."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support.tlsnginx import CLIENT_NAME, SERVER_NAME, TlsNginx

from authproxy import h1

TIMEOUTS: dict[str, Any] = {"connect_timeout": 5.0, "response_timeout": 5.0, "read_timeout": 5.0}


@pytest.fixture(scope="module")
def nginx() -> Iterator[TlsNginx]:
    server = TlsNginx.start()
    yield server
    server.stop()


async def get(pool: h1.Pool, origin: h1.Origin) -> tuple[int, bytes]:
    response = await pool.request(origin, "GET", "/", [], None, **TIMEOUTS)
    try:
        body = b""
        while chunk := await response.read():
            body += chunk
        return response.status, body
    finally:
        response.release()


async def test_a_private_ca_given_as_ca_file_is_trusted(nginx: TlsNginx) -> None:
    origin, _ = h1.Origin.split(f"https://127.0.0.1:{nginx.plain_port}", ca_file=nginx.file("server-ca.pem"))
    pool = h1.Pool()
    assert await get(pool, origin) == (200, b"tls ok")
    assert await get(pool, origin) == (200, b"tls ok")
    await pool.close()


async def test_without_the_ca_verification_fails_and_says_why(nginx: TlsNginx) -> None:
    origin, _ = h1.Origin.split(f"https://127.0.0.1:{nginx.plain_port}")
    pool = h1.Pool()
    with pytest.raises(h1.UpstreamError) as caught:
        await get(pool, origin)
    assert caught.value.kind == "tls"
    assert "certificate verification failed" in caught.value.detail
    assert "unable to get local issuer certificate" in caught.value.detail
    assert pool._count == 0
    await pool.close()


async def test_a_server_name_the_certificate_does_not_name_fails(nginx: TlsNginx) -> None:
    origin, _ = h1.Origin.split(
        f"https://127.0.0.1:{nginx.plain_port}", ca_file=nginx.file("server-ca.pem"), server_name="other.test"
    )
    pool = h1.Pool()
    with pytest.raises(h1.UpstreamError) as caught:
        await get(pool, origin)
    assert caught.value.kind == "tls"
    assert "certificate verification failed" in caught.value.detail
    assert "other.test" in caught.value.detail  # "Hostname mismatch, certificate is not valid for ..."
    await pool.close()


async def test_a_server_name_from_the_certificate_passes(nginx: TlsNginx) -> None:
    origin, _ = h1.Origin.split(
        f"https://127.0.0.1:{nginx.plain_port}", ca_file=nginx.file("server-ca.pem"), server_name=SERVER_NAME
    )
    pool = h1.Pool()
    assert await get(pool, origin) == (200, b"tls ok")
    await pool.close()


async def test_verify_false_accepts_any_certificate(nginx: TlsNginx) -> None:
    origin, _ = h1.Origin.split(f"https://127.0.0.1:{nginx.plain_port}", verify=False)
    pool = h1.Pool()
    assert await get(pool, origin) == (200, b"tls ok")
    await pool.close()


async def test_mutual_tls_needs_the_client_certificate(nginx: TlsNginx) -> None:
    url = f"https://127.0.0.1:{nginx.mutual_port}"
    pool = h1.Pool()
    without, _ = h1.Origin.split(url, ca_file=nginx.file("server-ca.pem"))
    try:
        status, body = await get(pool, without)
    except h1.UpstreamError as exc:  # a server may refuse the handshake itself
        assert exc.kind == "tls"
    else:  # nginx completes it and answers 400 "No required SSL certificate was sent"
        assert status == 400 and b"No required SSL certificate was sent" in body
    with_cert, _ = h1.Origin.split(
        url,
        ca_file=nginx.file("server-ca.pem"),
        client_cert_file=nginx.file("client.pem"),
        client_key_file=nginx.file("client.key"),
    )
    status, body = await get(pool, with_cert)
    assert status == 200 and body == f"client CN={CLIENT_NAME}".encode()
    await pool.close()


async def test_connections_never_cross_tls_settings(nginx: TlsNginx) -> None:
    """An unverified connection to the same address is not handed to a request that verifies."""
    url = f"https://127.0.0.1:{nginx.plain_port}"
    lax, _ = h1.Origin.split(url, verify=False)
    strict, _ = h1.Origin.split(url)
    trusting, _ = h1.Origin.split(url, ca_file=nginx.file("server-ca.pem"))
    assert lax != strict and hash(lax) != hash(strict)
    pool = h1.Pool()
    assert await get(pool, lax) == (200, b"tls ok")  # idle in the pool now
    with pytest.raises(h1.UpstreamError) as caught:
        await get(pool, strict)
    assert caught.value.kind == "tls"
    assert await get(pool, trusting) == (200, b"tls ok")
    # One context per distinct set of settings, built once.
    again, _ = h1.Origin.split(url + "/other", ca_file=nginx.file("server-ca.pem"))
    assert await get(pool, again) == (200, b"tls ok")
    assert len(pool._tls) == 3
    await pool.close()


async def test_unusable_tls_settings_are_a_tls_error(nginx: TlsNginx) -> None:
    origin, _ = h1.Origin.split(f"https://127.0.0.1:{nginx.plain_port}", ca_file="/nonexistent/ca.pem")
    pool = h1.Pool()
    with pytest.raises(h1.UpstreamError) as caught:
        await get(pool, origin)
    assert caught.value.kind == "tls" and "cannot be used" in caught.value.detail
    assert pool._count == 0
    await pool.close()


async def test_plain_http_to_a_tls_port_gets_the_upstreams_answer(nginx: TlsNginx) -> None:
    origin, _ = h1.Origin.split(f"http://127.0.0.1:{nginx.plain_port}")
    pool = h1.Pool()
    status, body = await get(pool, origin)  # nginx answers 400 in plain HTTP, and closes
    assert status == 400 and b"plain HTTP request was sent to HTTPS port" in body
    await pool.close()

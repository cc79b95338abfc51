"""The yardstick: the plainest correct aiohttp pass-through proxy, with the settings authproxy uses.

One pooled `ClientSession` per worker with a `DummyCookieJar`, no decompression, no automatic request
headers, no redirect following; hop-by-hop headers dropped both ways; bodies streamed in 64 KiB chunks;
uvloop when installed; N workers sharing the port with SO_REUSEPORT; no access log. Everything
authproxy does beyond this (sessions, policy, identity headers, logging, metrics) is what the
comparison measures.

    python -m bench.bare --listen 127.0.0.1:8001 --upstream http://127.0.0.1:8000 --workers 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from yarl import URL

from bench import aio

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te"}
    | {"trailer", "transfer-encoding", "upgrade", "host"}
)
RESPONSE_SKIP = HOP_BY_HOP | {"content-length"}
CLIENT = web.AppKey("client", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def handle(request: web.Request) -> web.StreamResponse:
    headers = [(name, value) for name, value in request.headers.items() if name.lower() not in HOP_BY_HOP]
    async with request.app[CLIENT].request(
        request.method,
        URL(request.app[UPSTREAM] + request.raw_path, encoded=True),
        headers=headers,
        data=request.content if request.body_exists else None,
        allow_redirects=False,
    ) as upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.headers.items():
            if name.lower() not in RESPONSE_SKIP:
                response.headers.add(name, value)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(64 * 1024):
            await response.write(chunk)
        await response.write_eof()
        return response


async def _client(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=512, limit_per_host=0, keepalive_timeout=15)
    app[CLIENT] = aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=60),
    )
    yield
    await app[CLIENT].close()


async def serve(host: str, port: int, upstream: str) -> None:
    app = web.Application(client_max_size=0)
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(_client)
    app.router.add_route("*", "/{tail:.*}", handle)
    await aio.serve(app, "bare", host, port, reuse_port=True, backlog=1024)


def worker(host: str, port: int, upstream: str) -> None:
    aio.run(serve(host, port, upstream))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    if args.workers == 1:
        worker(host, int(port), args.upstream)
        return
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=worker, args=(host, int(port), args.upstream)) for _ in range(args.workers)
    ]
    for process in processes:
        process.start()

    def stop(signum: int, frame: object) -> None:
        for process in processes:
            if process.pid is not None:
                process.terminate()

    signal.signal(signal.SIGTERM, stop)
    for process in processes:
        process.join()


if __name__ == "__main__":
    main()

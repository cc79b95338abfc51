"""An echo upstream: tells the test exactly what the proxy sent it, plus a few misbehaving endpoints."""

from __future__ import annotations

import asyncio
import gzip
import json

from aiohttp import WSMsgType, web

LAST_CLOSE = web.AppKey("last_close", dict)


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    payload = {
        "method": request.method,
        "path": request.raw_path,
        "headers": [[name, value] for name, value in request.headers.items()],
        "body_length": len(body),
        "body": body[:1024].decode("utf-8", "replace"),
    }
    return web.json_response(payload, headers={"X-Upstream": "echo"})


async def set_cookie(request: web.Request) -> web.Response:
    response = web.json_response({"set": request.query.get("value", "")})
    response.set_cookie("app_cookie", request.query.get("value", ""), path="/")
    return response


async def download(request: web.Request) -> web.StreamResponse:
    size = int(request.query.get("size", "1048576"))
    chunk = b"x" * 65536
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if request.query.get("chunked") != "1":
        response.content_length = size
    await response.prepare(request)
    sent = size if request.method == "HEAD" else 0
    while sent < size:
        part = chunk[: min(len(chunk), size - sent)]
        await response.write(part)
        sent += len(part)
    await response.write_eof()
    return response


async def upload(request: web.Request) -> web.Response:
    total = 0
    async for chunk in request.content.iter_chunked(65536):
        total += len(chunk)
    return web.json_response({"received": total, "chunked": request.headers.get("Transfer-Encoding", "")})


async def gzipped(request: web.Request) -> web.Response:
    data = gzip.compress(json.dumps({"compressed": True}).encode())
    return web.Response(body=data, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("delay", "1")))
    return web.json_response({"slow": True})


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    if code in (204, 304):
        return web.Response(status=code)
    return web.Response(status=code, text=f"status {code}")


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(autoping=False)
    await ws.prepare(request)
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            if message.data == "close":
                await ws.close(code=4000, message=b"bye")
            else:
                await ws.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await ws.send_bytes(message.data)
        elif message.type == WSMsgType.PING:
            await ws.pong(message.data)
    request.app[LAST_CLOSE]["code"] = ws.close_code
    return ws


async def last_close(request: web.Request) -> web.Response:
    return web.json_response({"code": request.app[LAST_CLOSE].get("code")})


def make_echo_app() -> web.Application:
    app = web.Application(client_max_size=1024**3)
    app[LAST_CLOSE] = {}
    app.router.add_get("/_set_cookie", set_cookie)
    app.router.add_get("/_download", download)
    app.router.add_post("/_upload", upload)
    app.router.add_get("/_gzip", gzipped)
    app.router.add_get("/_slow", slow)
    app.router.add_get("/_status/{code}", status)
    app.router.add_get("/_ws", websocket)
    app.router.add_get("/_ws_last_close", last_close)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def received_headers(payload: dict[str, object]) -> dict[str, str]:
    """The echo's header list as a lower-cased dict (last value wins)."""
    pairs = payload["headers"]
    assert isinstance(pairs, list)
    return {name.lower(): value for name, value in pairs}

"""A JupyterLab-like upstream for the websocket and event-stream tests.

What matters about JupyterLab here: its HTTP API and its kernel websocket live side by side, it checks
`Host` (against DNS rebinding), and it refuses a websocket whose `Origin` host is not the `Host` it was
sent (its cross-origin check), answering 403 with a JSON body. The kernel "runs" `execute:<code>` by
answering `result:<code>`, and `send:<n>` by sending n bytes. It records what reached it: handshake
headers, messages, the close codes its sockets ended with, and when an event stream's client left.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web


@dataclass
class KernelState:
    # The Host the proxy must send (its public host with preserve_host); None accepts any.
    expected_host: str | None = None
    # JupyterLab's cross-origin check on the kernel socket.
    check_origin: bool = True
    handshakes: list[dict[str, str]] = field(default_factory=list)
    messages: list[str | bytes] = field(default_factory=list)
    closes: list[int | None] = field(default_factory=list)
    open_sockets: int = 0
    streams_started: int = 0
    streams_left: int = 0
    requests: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def note(self) -> None:
        self.changed.set()

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        """Wait until `predicate()` is true (checked after every change the kernel records)."""
        async with asyncio.timeout(within):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


KERNEL = web.AppKey("kernel", KernelState)


def _host_refusal(request: web.Request) -> web.Response | None:
    expected = request.app[KERNEL].expected_host
    if expected is not None and request.headers.get("Host") != expected:
        body = {"message": f"Host {request.headers.get('Host')!r} is not allowed"}
        return web.json_response(body, status=403)
    return None


async def status(request: web.Request) -> web.Response:
    refused = _host_refusal(request)
    if refused is not None:
        return refused
    return web.json_response(
        {"host": request.headers.get("Host"), "user": request.headers.get("X-Forwarded-Email")}
    )


async def channels(request: web.Request) -> web.StreamResponse:
    state = request.app[KERNEL]
    state.handshakes.append(dict(request.headers))
    state.note()
    refused = _host_refusal(request)
    if refused is not None:
        return refused
    origin = request.headers.get("Origin")
    # JupyterLab's rule: a browser's socket must come from a page of the host it connects to.
    if state.check_origin and origin is not None and urlsplit(origin).netloc != request.headers.get("Host"):
        body = {"message": "Blocking Cross Origin WebSocket Attempt. Origin: " + origin}
        return web.json_response(body, status=403)
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    state.open_sockets += 1
    state.note()
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                state.messages.append(message.data)
                if message.data.startswith("execute:"):
                    await ws.send_str("result:" + message.data.removeprefix("execute:"))
                elif message.data.startswith("send:"):
                    await ws.send_bytes(b"k" * int(message.data.removeprefix("send:")))
                else:
                    await ws.send_str(message.data)
            elif message.type == WSMsgType.BINARY:
                state.messages.append(message.data)
                await ws.send_bytes(message.data)
            state.note()
    finally:
        state.open_sockets -= 1
        state.closes.append(ws.close_code)
        state.note()
    return ws


async def refuse(request: web.Request) -> web.Response:
    """Any request, websocket handshakes included, answered with the status in the path."""
    state = request.app[KERNEL]
    state.requests.append(request.path_qs)
    state.note()
    code = int(request.match_info["code"])
    headers = {"X-Kernel-Refusal": str(code)}
    if code == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="kernel"'
    if 300 <= code < 400:
        headers["Location"] = "/elsewhere"
    size = int(request.query.get("size", "0"))
    body = json.dumps({"refused": code}) if not size else "r" * size
    return web.Response(status=code, text=body, headers=headers, content_type="application/json")


async def events(request: web.Request) -> web.StreamResponse:
    """An event stream: a tick every 50 ms, or (`?quiet=1`) one event and then silence."""
    state = request.app[KERNEL]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    state.streams_started += 1
    state.note()
    quiet = request.query.get("quiet") == "1"
    try:
        count = 0
        while True:
            await response.write(f"data: tick {count}\n\n".encode())
            count += 1
            if quiet:
                # Idle, as a stream between events is: only the client leaving ends it.
                # aiohttp has no event for a client leaving a handler that does not read: poll.
                while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                break
            await asyncio.sleep(0.05)
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        state.streams_left += 1
        state.note()
    return response


async def page(request: web.Request) -> web.Response:
    refused = _host_refusal(request)
    if refused is not None:
        return refused
    return web.Response(text="<h1>JupyterLab</h1>", content_type="text/html")


def make_kernel_app(state: KernelState) -> web.Application:
    app = web.Application()
    app[KERNEL] = state
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/kernels/{kernel}/channels", channels)
    app.router.add_get("/refuse/{code}", refuse)
    app.router.add_get("/events", events)
    app.router.add_get("/public/events", events)
    app.router.add_get("/{tail:.*}", page)
    return app

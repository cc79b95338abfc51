"""The demo's upstream app: it knows nothing about login and shows what the proxy told it.

Pages: `/` (HTML with the identity headers and a websocket check), `/reports` (a sample deep link, the
README's example), `/api/whoami` (JSON), `/ws` (websocket echo), `/download?mb=N` (a large streamed
body), `/slow?seconds=S` (a slow answer).
Every answer is `Cache-Control: no-store`, so the back button after sign-out asks the proxy again.
"""

from __future__ import annotations

import asyncio
from html import escape

from aiohttp import WSMsgType, web

NO_STORE = {"Cache-Control": "no-store"}
IDENTITY = ("X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Preferred-Username", "X-Forwarded-For")

# Header names break only after their hyphens, values anywhere: a 390 px phone shows every row without
# sideways scrolling and without splitting `Forwarded` mid-word.
_STYLE = """body{font:16px/1.5 system-ui,sans-serif;max-width:44rem;margin:0 auto;padding:1.5rem 1rem;
color:#1d2430;overflow-wrap:anywhere}h1{font-size:1.6rem;line-height:1.25;margin:.5rem 0 1rem}
table{border-collapse:collapse;width:100%;table-layout:fixed}
td,th{text-align:left;vertical-align:top;padding:.4rem .5rem;border-bottom:1px solid #ddd}
th{width:40%;font-weight:600;overflow-wrap:normal;word-break:normal;hyphens:none}
td{overflow-wrap:anywhere}
code{background:#f1f3f5;padding:.1rem .3rem;border-radius:4px}
nav{display:flex;flex-wrap:wrap;gap:.4rem 1rem;margin:1rem 0}
.ok{color:#16794c}.bad{color:#b42318}a.button,button{background:#2457d6;color:#fff;border:0;
border-radius:8px;padding:.6rem 1.2rem;font:inherit;text-decoration:none;cursor:pointer;min-height:44px}
@media (max-width:30rem){th{width:45%}td,th{padding:.4rem .3rem}}"""

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>{title}</title>
<style>{style}</style></head>
<body>{body}
<nav><a href="/">Who am I</a> <a href="/reports">Reports</a> <a href="/api/whoami">JSON</a>
<a href="/download?mb=10">10 MB download</a> <a href="/slow?seconds=2">slow page</a></nav>
<form method="post" action="{prefix}/sign_out"><button id="sign-out" type="submit">Sign out</button></form>
{script}</body></html>"""

_WHOAMI = """<h1>Hello, <span id="email">{email}</span></h1>
<p>This app knows nothing about login. authproxy signed you in with CentralAuth and told it who you are:</p>
<table>{rows}</table>
<p>Websocket through the proxy: <strong id="ws-status">checking…</strong></p>"""

_WEBSOCKET_CHECK = """<script>
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
const status = document.getElementById("ws-status");
ws.onopen = () => ws.send("ping " + Date.now());
ws.onmessage = (event) => { status.textContent = "ok (echoed " + event.data.length + " bytes)";
  status.className = "ok"; ws.close(); };
ws.onerror = () => { status.textContent = "failed"; status.className = "bad"; };
</script>"""

# The sample deep link of the README's sequence diagram: a page behind the proxy that is not `/`, to
# show a login returning to where it started. The figures are made up.
_REPORTS = (("January", 1204, 87), ("February", 1350, 91), ("March", 1298, 104))


def _html(title: str, body: str, prefix: str, script: str = "") -> web.Response:
    html = _PAGE.format(title=escape(title), style=_STYLE, body=body, prefix=escape(prefix), script=script)
    return web.Response(text=html, content_type="text/html", headers=NO_STORE)


def _identity(request: web.Request) -> dict[str, str]:
    return {name: request.headers.get(name, "") for name in IDENTITY}


async def page(request: web.Request) -> web.Response:
    identity = _identity(request)
    rows = "".join(
        f"<tr><th>{escape(k)}</th><td><code>{escape(v)}</code></td></tr>" for k, v in identity.items()
    )
    body = _WHOAMI.format(email=escape(identity["X-Forwarded-Email"] or "stranger"), rows=rows)
    return _html("whoami", body, request.app[PREFIX], _WEBSOCKET_CHECK)


async def reports(request: web.Request) -> web.Response:
    email = request.headers.get("X-Forwarded-Email", "") or "stranger"
    rows = "".join(
        f"<tr><td>{month}</td><td>{visits:,}</td><td>{new}</td></tr>" for month, visits, new in _REPORTS
    )
    body = (
        '<h1 id="reports">Reports</h1>'
        f'<p>Quarterly figures for <span id="email">{escape(email)}</span>. A deep link like this one is '
        "where a login returns to: the proxy keeps it through CentralAuth and back.</p>"
        f"<table><tr><th>Month</th><th>Visits</th><th>Sign-ups</th></tr>{rows}</table>"
    )
    return _html("Reports", body, request.app[PREFIX])


async def whoami(request: web.Request) -> web.Response:
    return web.json_response({**_identity(request), "path": request.path_qs}, headers=NO_STORE)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            await ws.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


async def download(request: web.Request) -> web.StreamResponse:
    megabytes = max(1, min(int(request.query.get("mb", "10") or 10), 10_240))
    response = web.StreamResponse(
        headers={
            **NO_STORE,
            "Content-Type": "application/octet-stream",
            "Content-Disposition": 'attachment; filename="demo.bin"',
        }
    )
    response.content_length = megabytes << 20
    await response.prepare(request)
    block = b"\0" * (1 << 20)
    for _ in range(megabytes):
        await response.write(block)
    await response.write_eof()
    return response


async def slow(request: web.Request) -> web.Response:
    seconds = max(0.0, min(float(request.query.get("seconds", "2") or 2), 60.0))
    await asyncio.sleep(seconds)
    return web.json_response({"slept": seconds}, headers=NO_STORE)


PREFIX = web.AppKey("prefix", str)


def make_app(proxy_prefix: str = "/oauth2") -> web.Application:
    app = web.Application()
    app[PREFIX] = proxy_prefix
    app.router.add_get("/", page)
    app.router.add_get("/reports", reports)
    app.router.add_get("/api/whoami", whoami)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/download", download)
    app.router.add_get("/slow", slow)
    return app

"""The proxy's own answers on the wire: their security headers, the `Server` header, parser refusals.

Two kinds of answer leave the proxy. Forwarded ones come from an upstream through `authproxy.forwarder`,
and keep the upstream's headers exactly; the one thing changed is that aiohttp's own `Server` value
(which names the Python and aiohttp versions) is never added to them. Everything else is the proxy's
own — pages, JSON errors, redirects, health checks, forward-auth answers, aiohttp's 404/405 and 500,
and the 400 for a request the HTTP parser refused — and carries `pages.own_headers`, the
`X-Authproxy` marker and `Server: authproxy`.

aiohttp answers a refused request with the parser's message, which quotes the start of the offending
line: for an oversized `Cookie` header, the first bytes of an HttpOnly cookie, readable by a script on
the site that inflated the header. The connection handler here answers with a fixed text instead. The
refusal is still logged the way aiohttp logs it, which `authproxy.logs` turns into one line without the
quoted bytes.
"""

from __future__ import annotations

from http import HTTPStatus

from aiohttp import hdrs, web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_protocol import RequestHandler

from authproxy import pages

# The catch-all route in `app.build_app`: the one whose streamed answers come from an upstream.
PROXY_ROUTE = "proxy"
_OWN = (*pages.MARKER.items(), *pages.own_headers().items())


def install(app: web.Application) -> None:
    """Add the headers of the proxy's own answers to every answer `app` makes (once per app)."""
    if _on_prepare not in app.on_response_prepare:
        app.on_response_prepare.append(_on_prepare)


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    # Forwarded answers skip this hook (`authproxy.forwarder._Forwarded`); what is left of the catch-all
    # route's streamed answers is the WebSocketResponse of an upgrade. Everything the proxy writes
    # itself is a complete web.Response, aiohttp's HTTPExceptions included.
    if not isinstance(response, web.Response) and request.match_info.route.name == PROXY_ROUTE:
        # aiohttp fills in its default just before this hook with `setdefault(SERVER, SERVER_SOFTWARE)`.
        # An upstream's own header is a string decoded from its answer, never that very object, so
        # identity tells the two apart even when an aiohttp upstream sends the same text.
        if response.headers.get(hdrs.SERVER) is SERVER_SOFTWARE:
            del response.headers[hdrs.SERVER]
        return
    headers = response.headers
    for name, value in _OWN:
        # A value the answer already has stays: a page's own policy, the start route's Referrer-Policy.
        headers.setdefault(name, value)
    headers[hdrs.SERVER] = pages.SERVER


def refusal(status: int) -> web.Response:
    """A fixed answer for `status` that quotes nothing of the request, with the own-answer headers."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    headers = {
        **pages.MARKER,
        **pages.own_headers(),
        hdrs.SERVER: pages.SERVER,
    }
    response = web.Response(status=status, text=f"{status} {phrase}\n", headers=headers)
    response.force_close()
    return response


class _Connection(RequestHandler):
    """aiohttp's connection handler, answering its errors (parser refusals, 500, 504) with `refusal`."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own handling logs the error and refuses to answer twice (ConnectionError when the
        # answer had started); only the answer it built, which quotes `message`, is replaced.
        super().handle_error(request, status, exc, message)
        return refusal(status)


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        # What `web.Server.__call__` does, with the handler class above.
        return _Connection(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """An AppRunner whose connections answer errors with `refusal`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp picks the connection handler class inside `web.Server` and offers no parameter for it;
        # the server it built (with its arguments checked) is kept, with `__call__` from `_Server`.
        server.__class__ = _Server
        return server

"""The routes apps built on CentralAuth's official libraries call, for `[centralauth] compat_routes`.

Their frontends (the React hooks `useUser`, `useUserRequired`, `AffirmationRequired`) and native apps
talk to their own backend at `/api/auth/login`, `/callback`, `/user`, `/logout` and `/affirm`. With
the proxy as that backend:

- `/api/auth/login` and `/api/auth/affirm` start the proxy's own login (the second with `affirm=1`),
  coming back to `return_to` (or `rd`) when it is a safe return URL;
- `/api/auth/user` answers the signed-in user as CentralAuth's User JSON, or `null` with 200 when
  there is none, as the hooks expect; it takes the session cookie, or `Authorization: Bearer` with a
  native app's `device-id`;
- `/api/auth/callback` and `/api/auth/logout` are the proxy's callback and sign-out under those names
  (registered by the composition root).
"""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from authproxy import gate, pages
from authproxy.context import RUNTIME
from authproxy.core.redirect import safe_return_url
from authproxy.core.user import User
from authproxy.errors import AccessDenied


def _start(request: web.Request, *, affirm: bool) -> web.Response:
    runtime = request[RUNTIME]
    target = safe_return_url(request.query.get("return_to") or request.query.get("rd"), runtime.redirects)
    query = {"rd": target, **({"affirm": "1"} if affirm else {})}
    location = f"{runtime.prefix}/start?{urlencode(query)}"
    return web.Response(status=302, headers={"Location": location, **pages.MARKER})


async def login(request: web.Request) -> web.Response:
    return _start(request, affirm=False)


async def affirm(request: web.Request) -> web.Response:
    return _start(request, affirm=True)


async def user(request: web.Request) -> web.Response:
    runtime = request[RUNTIME]
    found: User | None = None
    try:
        session = await gate.load_session(request, runtime)
        device_id = ""
        if session is None:
            presented = gate.bearer_credentials(request)
            if presented is not None:
                session, device_id = presented.session(runtime), presented.device_id
        if session is not None:
            found = await gate.check_session(request, runtime, session, device_id=device_id)
    except AccessDenied:
        found = None  # signed in at CentralAuth, but not let in here: no user for this app
    body = _user_json(found) if found is not None else None
    return web.json_response(body, headers={"Cache-Control": "no-store", **pages.MARKER})


def _user_json(found: User) -> dict[str, object]:
    """The fields of CentralAuth's User object the proxy knows (its userinfo answer)."""
    return {
        "id": found.id,
        "email": found.email,
        "verified": found.verified,
        "blocked": found.blocked,
        "organizationId": found.organization_id,
        "affirmationDate": found.affirmation_date,
    }

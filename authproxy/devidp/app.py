"""The composition root of the fake CentralAuth: `make_app(settings)` wires routes, middlewares and state.

Middlewares, outermost first: errors (every failure becomes an error object) → recording (counts and
logs back-channel calls, including ones that fault or fail) → faults (injected outages). Request
bodies are capped at `MAX_BODY` bytes; a bigger body answers 413 with an error object.
"""

from __future__ import annotations

from aiohttp import web

from . import control, direct, discovery, login, session_api, verify
from .context import CONTEXT, Context
from .errors import error_middleware
from .faults import fault_middleware
from .recorder import recording_middleware
from .settings import DevIdpSettings

# Tokens, codes and forms are a few KiB at most; anything near this limit is abuse.
MAX_BODY = 64 * 1024


def make_app(settings: DevIdpSettings) -> web.Application:
    ctx = Context(settings=settings)
    app = web.Application(
        client_max_size=MAX_BODY,
        middlewares=[
            error_middleware,
            recording_middleware(ctx.recorder, ctx.clock),
            fault_middleware(ctx.faults),
        ],
    )
    app[CONTEXT] = ctx
    app.router.add_get("/login", login.show_form)
    app.router.add_post("/login", login.submit_form)
    app.router.add_get("/login/link/{attempt_id}", login.follow_link)
    app.router.add_post("/api/v1/verify", verify.verify)
    app.router.add_post("/api/v1/userinfo", session_api.userinfo)
    app.router.add_post("/api/v1/logout", session_api.logout)
    app.router.add_post("/api/v1/authenticate_direct", direct.authenticate_direct)
    app.router.add_get("/api/v1/client_challenge/{client_id}", discovery.client_challenge)
    app.router.add_get("/.well-known/openid-configuration", discovery.openid_configuration)
    app.router.add_routes(control.routes)
    return app

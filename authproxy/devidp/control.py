"""The test-control API under `/_devidp/`: not part of CentralAuth, only of the fake.

Core calls (every call here is listed in README.md, "The fake CentralAuth", so their names are part of
the public contract):

- `POST /_devidp/users/{email}/logout` ends every session of the user → `{"ended": n}` (404 if unknown).
- `PATCH /_devidp/users/{email}` `{"blocked": bool, "verified": bool}` (both optional) changes the
  user → the User object. An unknown user is created (verified unless the body says otherwise), which
  is also how tests provision users when `enableUserCreation` is off.
- `POST /_devidp/faults` / `DELETE /_devidp/faults`: queue / clear injected faults (see `faults`).
- `GET /_devidp/stats` → `{"userinfo": n, "verify": n, "logout": n, "login": n}` (see `recorder`).
- `GET /_devidp/requests` → the recorded `/api/v1/*` requests, oldest first.
- `POST /_devidp/clock` `{"advance": seconds}` moves the fake clock forward → `{"now", "offset"}`.

Extras:

- `GET /_devidp/users` → list of users; `GET /_devidp/users/{email}` → `{"user", "sessions"}`.
- `GET /_devidp/sessions` → list of sessions (`id`, `userId`, `email`, `active`, `ended`, `ip`,
  `userAgent`, `deviceId`, `origins`, dates); `DELETE /_devidp/sessions/{id}` revokes one session.
- `GET /_devidp/faults` → the faults still queued.
- `DELETE /_devidp/stats` and `DELETE /_devidp/requests` reset the counters / the request log.
- `GET /_devidp/clock` → `{"now": iso, "offset": seconds}`.
- `GET /_devidp/settings` and `PATCH /_devidp/settings` with CentralAuth's camelCase names
  (`maxSessionTime`, `hijackProtection`, `checkReferrer`, `autoLogin`, `whitelistItems`,
  `clientSecret`, ...) → the settings, without the secret.
- `GET /_devidp/login-links` → direct-authentication attempts with their `link`.
- `GET /_devidp/autologin` → autologin deliveries (`sessionId`, `origin`, `url`, `created`).
- `POST /_devidp/reset` forgets users, sessions, codes, login attempts, deliveries, faults, counters,
  recorded requests and the clock offset; the settings stay.

Bad input (invalid JSON, unknown fields, wrong types) answers 400 with an error object.
"""

from __future__ import annotations

from aiohttp import web

from .bodies import json_object
from .clock import iso
from .context import Context, base_url, context
from .direct import login_link
from .errors import ApiError
from .faults import Fault
from .model import User
from .responses import json_response
from .settings import apply_changes, describe
from .store import Store

routes = web.RouteTableDef()
_USER_FIELDS = frozenset({"blocked", "verified"})


def _known_user(ctx: Context, email: str) -> User:
    user = ctx.store.find_user(email)
    if user is None:
        raise ApiError("entityMissing", f"No user {email}", 404)
    return user


@routes.get("/_devidp/users")
async def list_users(request: web.Request) -> web.Response:
    return json_response([user.to_json() for user in context(request).store.users.values()])


@routes.get("/_devidp/users/{email}")
async def show_user(request: web.Request) -> web.Response:
    ctx = context(request)
    user = _known_user(ctx, request.match_info["email"])
    sessions = [session.to_json() for session in ctx.store.sessions_of(user)]
    return json_response({"user": user.to_json(), "sessions": sessions})


@routes.patch("/_devidp/users/{email}")
async def change_user(request: web.Request) -> web.Response:
    ctx = context(request)
    changes = await json_object(request)
    unknown = set(changes) - _USER_FIELDS
    if unknown or not all(isinstance(value, bool) for value in changes.values()):
        raise ApiError("entityInvalid", "Only boolean 'blocked' and 'verified' can be changed")
    email = request.match_info["email"]
    now = ctx.clock.now()
    user = ctx.store.find_user(email) or ctx.store.create_user(
        email, ctx.settings.client_id, now, verified=True
    )
    user.blocked = bool(changes.get("blocked", user.blocked))
    user.verified = bool(changes.get("verified", user.verified))
    user.updated = now
    return json_response(user.to_json())


@routes.post("/_devidp/users/{email}/logout")
async def logout_user(request: web.Request) -> web.Response:
    ctx = context(request)
    user = _known_user(ctx, request.match_info["email"])
    return json_response({"ended": ctx.store.end_sessions_of(user, "revoked")})


@routes.get("/_devidp/sessions")
async def list_sessions(request: web.Request) -> web.Response:
    return json_response([session.to_json() for session in context(request).store.sessions.values()])


@routes.delete("/_devidp/sessions/{session_id}")
async def revoke_session(request: web.Request) -> web.Response:
    session = context(request).store.sessions.get(request.match_info["session_id"])
    if session is None:
        raise ApiError("sessionMissing", "No such session", 404)
    if session.active:
        session.ended = "revoked"
    return json_response(session.to_json())


@routes.post("/_devidp/faults")
async def add_fault(request: web.Request) -> web.Response:
    try:
        fault = Fault.from_json(await json_object(request))
    except ValueError as exc:
        raise ApiError("entityInvalid", str(exc)) from None
    context(request).faults.add(fault)
    return json_response(fault.to_json(), status=201)


@routes.get("/_devidp/faults")
async def list_faults(request: web.Request) -> web.Response:
    return json_response([fault.to_json() for fault in context(request).faults.pending()])


@routes.delete("/_devidp/faults")
async def clear_faults(request: web.Request) -> web.Response:
    context(request).faults.clear()
    return json_response([])


@routes.get("/_devidp/stats")
async def stats(request: web.Request) -> web.Response:
    return json_response(context(request).recorder.stats)


@routes.delete("/_devidp/stats")
async def reset_stats(request: web.Request) -> web.Response:
    recorder = context(request).recorder
    recorder.reset_stats()
    return json_response(recorder.stats)


@routes.get("/_devidp/requests")
async def recorded_requests(request: web.Request) -> web.Response:
    return json_response(list(context(request).recorder.requests))


@routes.delete("/_devidp/requests")
async def forget_requests(request: web.Request) -> web.Response:
    context(request).recorder.requests.clear()
    return json_response([])


def _clock_state(ctx: Context) -> dict[str, object]:
    return {"now": iso(ctx.clock.now()), "offset": ctx.clock.offset}


@routes.get("/_devidp/clock")
async def show_clock(request: web.Request) -> web.Response:
    return json_response(_clock_state(context(request)))


@routes.post("/_devidp/clock")
async def advance_clock(request: web.Request) -> web.Response:
    ctx = context(request)
    data = await json_object(request)
    seconds = data.get("advance")
    if set(data) != {"advance"} or isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ApiError("entityInvalid", 'Expected {"advance": seconds}')
    try:
        ctx.clock.advance(seconds)
    except ValueError as exc:
        raise ApiError("entityInvalid", str(exc)) from None
    return json_response(_clock_state(ctx))


@routes.get("/_devidp/settings")
async def show_settings(request: web.Request) -> web.Response:
    return json_response(describe(context(request).settings))


@routes.patch("/_devidp/settings")
async def change_settings(request: web.Request) -> web.Response:
    ctx = context(request)
    try:
        ctx.settings = apply_changes(ctx.settings, await json_object(request))
    except ValueError as exc:
        raise ApiError("entityInvalid", str(exc)) from None
    return json_response(describe(ctx.settings))


@routes.get("/_devidp/login-links")
async def login_links(request: web.Request) -> web.Response:
    ctx = context(request)
    base = base_url(request, ctx)
    attempts = ctx.store.attempts.values()
    return json_response([attempt.to_json(login_link(base, attempt)) for attempt in attempts])


@routes.get("/_devidp/autologin")
async def autologin_deliveries(request: web.Request) -> web.Response:
    return json_response([delivery.to_json() for delivery in context(request).store.deliveries])


@routes.post("/_devidp/reset")
async def reset(request: web.Request) -> web.Response:
    ctx = context(request)
    ctx.store = Store()
    ctx.recorder.reset()
    ctx.faults.clear()
    ctx.clock.reset()
    return json_response({"reset": True})

"""Public metadata endpoints: the OpenID discovery document and the desktop client challenge.

The discovery document is a standard OpenID Connect one, since the contents of CentralAuth's are unknown.
It advertises the fake's own base URL, `public_url` when set, else the origin the request came to.
There is no `jwks_uri`: tokens are encrypted with the client secret, not signed.

`GET /api/v1/client_challenge/{client_id}` answers a fresh nonce as plain text, the first step of the
attestation CentralAuth offers desktop apps. The fake does not verify the resulting `client_assertion`.
"""

from __future__ import annotations

import secrets

from aiohttp import web

from .context import base_url, context
from .errors import unknown_organization
from .responses import json_response


async def openid_configuration(request: web.Request) -> web.Response:
    base = base_url(request, context(request))
    return json_response(
        {
            "issuer": base,
            "authorization_endpoint": f"{base}/login",
            "token_endpoint": f"{base}/api/v1/verify",
            "userinfo_endpoint": f"{base}/api/v1/userinfo",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        }
    )


async def client_challenge(request: web.Request) -> web.Response:
    if request.match_info["client_id"] != context(request).settings.client_id:
        raise unknown_organization()
    return web.Response(text=secrets.token_urlsafe(32), headers={"Cache-Control": "no-store"})

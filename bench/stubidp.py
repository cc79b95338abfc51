"""A CentralAuth stand-in that vouches for any token, for the 100,000-session memory measurement.

The fake CentralAuth (`authproxy devidp`) would need 100,000 real logins to know that many sessions;
what is measured there is the proxy's memory for its cached answers, which does not depend on who
gave them. Each token gets its own user (id and e-mail derived from the token), shaped like the fake's
userinfo answer, so every cache entry is as large as a real one.

    python -m bench.stubidp --listen 127.0.0.1:9001
"""

from __future__ import annotations

import argparse
import hashlib

from aiohttp import web

from bench import aio


async def userinfo(request: web.Request) -> web.Response:
    token = await request.read()
    user = hashlib.sha256(token).hexdigest()[:32]
    user_id = f"{user[:8]}-{user[8:12]}-{user[12:16]}-{user[16:20]}-{user[20:32]}"
    return web.json_response(
        {
            "id": user_id,
            "email": f"user-{user[:12]}@example.com",
            "verified": True,
            "blocked": False,
            "affirmationDate": "2026-01-01T00:00:00.000Z",
        }
    )


async def serve(host: str, port: int) -> None:
    app = web.Application()
    app.router.add_post("/api/v1/userinfo", userinfo)
    await aio.serve(app, "stubidp", host, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    aio.run(serve(host, int(port)))


if __name__ == "__main__":
    main()

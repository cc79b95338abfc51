"""Starts the demo: fake CentralAuth, whoami app and proxy on loopback ports, with generated secrets.

`cookie_secure` is off because the demo is plain http on localhost; everything else is the proxy's
production code path, configured through the same `Config` model a TOML file would produce.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from dataclasses import dataclass, field

from aiohttp import web

from authproxy.app import build_app, make_runner
from authproxy.config import Config
from authproxy.demo import whoami
from authproxy.devidp import DevIdpSettings
from authproxy.devidp import make_app as make_idp_app

DEMO_USERS = ("ada@example.com", "grace@example.com")


@dataclass
class Demo:
    proxy_url: str
    idp_url: str
    app_url: str
    config: Config
    runners: list[web.AppRunner] = field(default_factory=list)

    async def stop(self) -> None:
        for runner in reversed(self.runners):
            await runner.cleanup()


async def _serve(runner: web.AppRunner, host: str, port: int) -> web.AppRunner:
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def start_demo(
    host: str = "127.0.0.1", port: int = 4180, idp_port: int = 9000, app_port: int = 8080
) -> Demo:
    """Start all three servers; a port of 0 picks a free one (the tests do that)."""
    port, idp_port, app_port = (number or _free_port(host) for number in (port, idp_port, app_port))
    idp = DevIdpSettings(allow_localhost=True)
    runners = [await _serve(web.AppRunner(make_idp_app(idp), access_log=None), host, idp_port)]
    runners.append(await _serve(web.AppRunner(whoami.make_app(), access_log=None), host, app_port))
    proxy_url = f"http://{host}:{port}"
    config = Config(
        server={"listen": f"{host}:{port}", "public_url": proxy_url},
        centralauth={
            "base_url": f"http://{host}:{idp_port}",
            "client_id": idp.client_id,
            "client_secret": idp.client_secret,
            "session_check_ttl": 10,
        },
        session={"cookie_secrets": [secrets.token_urlsafe(32)], "cookie_secure": False},
        upstreams=[{"path": "/", "url": f"http://{host}:{app_port}"}],
        logging={"format": "console", "level": "info"},
    )
    runners.append(await _serve(make_runner(build_app(config)), host, port))
    return Demo(proxy_url, f"http://{host}:{idp_port}", f"http://{host}:{app_port}", config, runners)


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def banner(demo: Demo) -> str:
    users = "\n".join(f"    {user}" for user in DEMO_USERS)
    return f"""
authproxy demo is running.

  Open   {demo.proxy_url}/
  Sign in with any e-mail address at the fake CentralAuth ({demo.idp_url}), for example:
{users}
  The app behind the proxy ({demo.app_url}) shows the identity headers it receives.
  Try also: {demo.proxy_url}/api/whoami (JSON) and {demo.proxy_url}/oauth2/sign_out.
  Play CentralAuth's admin (the proxy notices within 10 seconds):
    log out everywhere: curl -X POST {demo.idp_url}/_devidp/users/ada@example.com/logout
    block a user:       curl -X PATCH {demo.idp_url}/_devidp/users/ada@example.com -d '{{"blocked": true}}'

Press Ctrl+C to stop.
"""


async def run_forever(port: int, idp_port: int, app_port: int) -> None:
    demo = await start_demo(port=port, idp_port=idp_port, app_port=app_port)
    print(banner(demo), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await demo.stop()

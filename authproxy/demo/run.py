"""Starts the demo: fake CentralAuth, whoami app and proxy on loopback ports, with generated secrets.

`cookie_secure` is off because the demo is plain http on localhost; everything else is the proxy's
production code path, configured through the same `Config` model a TOML file would produce.

All three ports are bound before anything starts, the way `authproxy serve` binds its port: a busy one
is `PortUnavailable`, naming the address and the command-line option that moves it. `run_forever`
stops on SIGINT or SIGTERM through its own handlers, so a demo started in the background (where
SIGINT is ignored from the start) stops on either too.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import socket
from dataclasses import dataclass, field

from aiohttp import web

from authproxy.app import build_app, make_runner
from authproxy.config import Config
from authproxy.demo import whoami
from authproxy.devidp import DevIdpSettings
from authproxy.devidp import make_app as make_idp_app
from authproxy.server import ListenError, bind

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


class PortUnavailable(Exception):
    """A demo port that cannot be listened on, with the option that chooses another."""

    def __init__(self, error: ListenError, option: str) -> None:
        self.option = option
        super().__init__(f"{error} (choose another port with {option})")


async def _serve(runner: web.AppRunner, sockets: list[socket.socket]) -> web.AppRunner:
    await runner.setup()
    for sock in sockets:
        await web.SockSite(runner, sock).start()
    return runner


def _bind_all(host: str, ports: dict[str, int]) -> dict[str, list[socket.socket]]:
    """Listening sockets for each option's port, or PortUnavailable with nothing left open."""
    bound: dict[str, list[socket.socket]] = {}
    try:
        for option, number in ports.items():
            try:
                bound[option] = bind(host, number, backlog=128)
            except ListenError as exc:
                raise PortUnavailable(exc, option) from exc
    except PortUnavailable:
        for sockets in bound.values():
            for sock in sockets:
                sock.close()
        raise
    return bound


async def start_demo(
    host: str = "127.0.0.1", port: int = 4180, idp_port: int = 9000, app_port: int = 8080
) -> Demo:
    """Start all three servers; a port of 0 picks a free one (the tests do that)."""
    bound = _bind_all(host, {"--port": port, "--idp-port": idp_port, "--app-port": app_port})
    port, idp_port, app_port = (
        bound[option][0].getsockname()[1] for option in ("--port", "--idp-port", "--app-port")
    )
    idp = DevIdpSettings(allow_localhost=True)
    proxy_url, idp_url, app_url = (f"http://{host}:{number}" for number in (port, idp_port, app_port))
    config = Config(
        server={"listen": f"{host}:{port}", "public_url": proxy_url},
        centralauth={
            "base_url": idp_url,
            "client_id": idp.client_id,
            "client_secret": idp.client_secret,
            "session_check_ttl": 10,
        },
        session={"cookie_secrets": [secrets.token_urlsafe(32)], "cookie_secure": False},
        upstreams=[{"path": "/", "url": app_url}],
        logging={"format": "console", "level": "info"},
    )
    demo = Demo(proxy_url, idp_url, app_url, config)
    try:
        idp_app = web.AppRunner(make_idp_app(idp), access_log=None)
        demo.runners.append(await _serve(idp_app, bound["--idp-port"]))
        whoami_app = web.AppRunner(whoami.make_app(), access_log=None)
        demo.runners.append(await _serve(whoami_app, bound["--app-port"]))
        demo.runners.append(await _serve(make_runner(build_app(config)), bound["--port"]))
    except BaseException:
        # A runner that started owns its sockets; closing the rest again is harmless.
        await demo.stop()
        for sockets in bound.values():
            for sock in sockets:
                sock.close()
        raise
    return demo


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
    """Serve the demo until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed before anything starts: a signal during start-up then stops the demo once it is up.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    demo = await start_demo(port=port, idp_port=idp_port, app_port=app_port)
    try:
        print(banner(demo), flush=True)
        await stop.wait()
    finally:
        await demo.stop()

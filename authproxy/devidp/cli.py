"""Command line of the fake CentralAuth: `authproxy devidp [options]` or `python -m authproxy.devidp`.

Core options: `--listen HOST:PORT`, `--client-id`, `--client-secret`, `--whitelist ORIGIN`
(repeatable; none = allow all), `--max-session-time S`, `--max-inactivity-time S`,
`--no-hijack-protection`, `--autologin`. Extras: `--auto-approve EMAIL`, `--trust-forwarded-for`,
`--no-check-referrer`, `--no-user-creation`, `--no-allow-localhost`, `--code-ttl S`, `--public-url URL`.
All of them are listed in README.md ("The fake CentralAuth"), so their names are part of the public
contract.

A generated client id or secret is printed once on stdout, since the relying party needs it; the
access log shows method and path only, because query strings carry states and login-link tokens.
Runs until SIGINT or SIGTERM, through its own handlers, so that it also stops on SIGINT when started
in the background (where SIGINT starts out ignored). The port is bound without SO_REUSEPORT: a busy one
is a single line on stderr naming the address. Exit status: 0 after a clean stop, 2 for bad options or
an address it cannot listen on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import Sequence

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

from .app import make_app
from .settings import SECRET_LENGTH, DevIdpSettings, generate_secret

log = logging.getLogger("authproxy.devidp")


class _PathOnlyAccessLogger(AbstractAccessLogger):
    """One line per request without the query string (it may hold states and link tokens)."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s -> %s (%.1f ms)", request.method, request.path, response.status, time * 1000)


def _listen_address(value: str) -> tuple[str, int]:
    host, colon, port = value.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def _seconds(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number of seconds >= 0, got {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authproxy devidp", description="Run the fake CentralAuth server.")
    add = parser.add_argument
    add(
        "--listen",
        type=_listen_address,
        default=("127.0.0.1", 9000),
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:9000)",
    )
    add("--client-id", help="the organization's client id (default: a generated UUID)")
    add(
        "--client-secret",
        help=f"the {SECRET_LENGTH}-character client secret (default: generated and printed)",
    )
    add(
        "--whitelist",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="whitelisted origin such as https://app.example.com or https://*.example.com (repeatable)",
    )
    add("--max-session-time", type=_seconds, default=0, metavar="S", help="maxSessionTime (0 = off)")
    add("--max-inactivity-time", type=_seconds, default=0, metavar="S", help="maxInactivityTime (0 = off)")
    add("--no-hijack-protection", action="store_true", help="turn hijackProtection off")
    add("--autologin", action="store_true", help="turn the organization's autoLogin on")
    add("--auto-approve", metavar="EMAIL", help="complete every valid login at once as this user")
    add(
        "--trust-forwarded-for",
        action="store_true",
        help="record the browser IP from X-Forwarded-For's first entry (to simulate client IPs)",
    )
    add("--no-check-referrer", action="store_true", help="turn checkReferrer off")
    add("--no-user-creation", action="store_true", help="turn enableUserCreation off")
    add("--no-allow-localhost", action="store_true", help="turn allowLocalhost off")
    add(
        "--code-ttl",
        type=_seconds,
        default=120,
        metavar="S",
        help="authorization code lifetime (default 120)",
    )
    add("--public-url", metavar="URL", help="base URL advertised by the discovery document")
    return parser


def _settings(args: argparse.Namespace) -> DevIdpSettings:
    return DevIdpSettings(
        client_id=args.client_id or str(uuid.uuid4()),
        client_secret=args.client_secret or generate_secret(),
        whitelist=args.whitelist,
        max_session_time=args.max_session_time,
        max_inactivity_time=args.max_inactivity_time,
        hijack_protection=not args.no_hijack_protection,
        auto_login=args.autologin,
        auto_approve_email=args.auto_approve,
        trust_forwarded_for=args.trust_forwarded_for,
        check_referrer=not args.no_check_referrer,
        enable_user_creation=not args.no_user_creation,
        allow_localhost=not args.no_allow_localhost,
        code_ttl=args.code_ttl,
        public_url=args.public_url,
    )


class _CannotListen(Exception):
    """The address, and why it cannot be listened on, for one line on stderr."""


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(error: OSError) -> str:
    # asyncio wraps the errno's text in a longer message; the errno alone says it best.
    if isinstance(error, socket.gaierror) or not error.errno or error.errno < 0:
        text = error.strerror or str(error)
    else:
        text = os.strerror(error.errno)
    return text[:1].lower() + text[1:]


async def _serve(settings: DevIdpSettings, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed before listening, so a signal during start-up is kept rather than lost or a traceback.
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(make_app(settings), access_log_class=_PathOnlyAccessLogger)
    await runner.setup()
    try:
        try:
            # reuse_port stays off: with it, another process could share the port unnoticed.
            await web.TCPSite(runner, host, port, reuse_port=False).start()
        except OSError as exc:
            raise _CannotListen(f"cannot listen on {_address(host, port)}: {_reason(exc)}") from exc
        for address in runner.addresses:
            log.info(
                "fake CentralAuth listening on http://%s (client_id %s)",
                _address(address[0], address[1]),
                settings.client_id,
            )
        await stop.wait()
        log.info("fake CentralAuth stopping")
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    if args.client_secret is not None and len(args.client_secret) != SECRET_LENGTH:
        print(
            f"authproxy devidp: error: --client-secret must be exactly {SECRET_LENGTH} characters "
            f"(got {len(args.client_secret)})",
            file=sys.stderr,
        )
        return 2
    try:
        settings = _settings(args)
    except ValueError as exc:
        print(f"authproxy devidp: error: {exc}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.client_id is None:
        print(f"generated client id: {settings.client_id}", flush=True)
    if args.client_secret is None:
        print(f"generated client secret: {settings.client_secret}", flush=True)
    host, port = args.listen
    try:
        asyncio.run(_serve(settings, host, port))
    except _CannotListen as exc:
        print(f"authproxy devidp: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:  # only before its own SIGINT handler is installed
        pass
    return 0

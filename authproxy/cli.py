"""The `authproxy` command line: serve, check-config, explain, sessions, devidp, demo, gen-secret,
gen-signing-key.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or invalid configuration (one line per problem,
each naming its key). Valid but risky settings are warnings (`warning: key: message` from check-config,
`config.warning` events from serve); `check-config --strict` refuses them too.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Sequence

from authproxy import __version__, sessions_command
from authproxy.config import Config, ConfigError, load
from authproxy.config_checks import config_warnings

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="authproxy", description="Authenticating reverse proxy for CentralAuth."
    )
    parser.add_argument("--version", action="version", version=f"authproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("-c", "--config", required=True, metavar="FILE", help="TOML config file")

    check = commands.add_parser("check-config", help="validate a config file (exit 0, or 2 with errors)")
    check.add_argument("-c", "--config", required=True, metavar="FILE", help="TOML config file")
    check.add_argument("--strict", action="store_true", help="treat warnings as errors (exit 2)")
    check.add_argument("--show-routes", action="store_true", help="print the effective route table")

    explain = commands.add_parser(
        "explain", help="trace one request through the routes and rules (exit 0 whatever the decision)"
    )
    explain.add_argument("-c", "--config", required=True, metavar="FILE", help="TOML config file")
    explain.add_argument("--method", default="GET", help="HTTP method (default GET)")
    explain.add_argument("--email", default="", help="a signed-in user's e-mail; without it, no session")
    explain.add_argument("--unverified", action="store_true", help="the user's e-mail is not verified")
    explain.add_argument("--blocked", action="store_true", help="the user is blocked at CentralAuth")
    explain.add_argument(
        "--affirmed-ago", type=float, default=0.0, metavar="SECONDS",
        help="seconds since the session's last CentralAuth affirmation (default 0)",
    )  # fmt: skip
    explain.add_argument("--client-ip", default="203.0.113.10", help="the end user's IP")
    explain.add_argument("--json", action="store_true", help="print one JSON object")
    explain.add_argument("url", metavar="URL", help="https://host/path?query, or a path on public_url")

    # Only listed here for --help: its options belong to the fake and are parsed by it (see main()).
    commands.add_parser("devidp", help="run the fake CentralAuth server (devidp --help for options)")

    demo = commands.add_parser("demo", help="run a fake CentralAuth, a whoami app and the proxy on localhost")
    demo.add_argument("--port", type=int, default=4180, help="proxy port (default 4180)")
    demo.add_argument("--idp-port", type=int, default=9000, help="fake CentralAuth port (default 9000)")
    demo.add_argument("--app-port", type=int, default=8080, help="whoami app port (default 8080)")
    sessions_command.add_parser(commands)
    commands.add_parser("gen-secret", help="print a fresh cookie secret")
    commands.add_parser(
        "gen-signing-key", help="print a fresh EC P-256 private key (PEM) for [headers] jwt_signing_key_file"
    )
    return parser


def _load(path: str) -> Config | None:
    """The config at `path`, or None after printing its problems, one `key: message` line each."""
    try:
        return load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def check_config(path: str, strict: bool = False, show_routes: bool = False) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    warnings = config_warnings(config)
    if strict and warnings:
        # Under --strict a warning is an error, printed as errors are: one `key: message` line.
        for warning in warnings:
            print(warning, file=sys.stderr)
        return EXIT_CONFIG
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    count = f" ({len(warnings)} warning{'s' if len(warnings) > 1 else ''})" if warnings else ""
    print(f"{path}: configuration is valid{count}")
    if show_routes:
        from authproxy.explain import show_routes as routes_of

        print(routes_of(config))
    return EXIT_OK


def explain(args: argparse.Namespace) -> int:
    from authproxy.explain import Subject
    from authproxy.explain import explain as trace

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    subject = Subject(args.email, not args.unverified, args.blocked, args.affirmed_ago, args.client_ip)
    try:
        result = trace(config, args.method, args.url, subject)
    except ValueError as exc:
        print(f"authproxy explain: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(result.to_json() if args.json else result.to_text())
    return EXIT_OK


def log_config_warnings(config: Config) -> None:
    """The check-config warnings as `config.warning` events, once logging is configured."""
    import structlog

    log = structlog.get_logger("authproxy.config")
    for warning in config_warnings(config):
        log.warning("config.warning", key=warning.key, message=warning.message)


def gen_secret() -> int:
    # 32 random bytes, URL-safe so it can sit in TOML, an env var or a Kubernetes Secret unquoted.
    print(secrets.token_urlsafe(32))
    return EXIT_OK


def gen_signing_key() -> int:
    from authproxy.core.signing_keys import new_signing_key

    # PKCS #8 PEM: append it to the key file (first = the signing key, every key is published).
    sys.stdout.write(new_signing_key().decode("ascii"))
    return EXIT_OK


def serve(path: str) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    from authproxy import logs, server

    logs.configure(config.logging.format, config.logging.level)
    log_config_warnings(config)
    return server.run(path, config)


def demo(port: int, idp_port: int, app_port: int) -> int:
    import asyncio

    from authproxy import logs
    from authproxy.demo.run import PortUnavailable, run_forever

    logs.configure("console", "info")
    try:
        asyncio.run(run_forever(port, idp_port, app_port))
    except KeyboardInterrupt:  # only before its own SIGINT handler is installed
        return EXIT_OK
    except PortUnavailable as exc:
        print(f"authproxy demo: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["devidp"]:
        # The fake CentralAuth imports nothing from the proxy and owns its whole option set.
        from authproxy.devidp.cli import main as devidp_main

        return devidp_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.config, args.strict, args.show_routes)
    if args.command == "explain":
        return explain(args)
    if args.command == "gen-secret":
        return gen_secret()
    if args.command == "gen-signing-key":
        return gen_signing_key()
    if args.command == "serve":
        return serve(args.config)
    if args.command == "demo":
        return demo(args.port, args.idp_port, args.app_port)
    if args.command == "sessions":
        config = _load(args.config)
        return EXIT_CONFIG if config is None else sessions_command.run(args, config)
    return EXIT_FAILURE

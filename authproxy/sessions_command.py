"""`authproxy sessions -c FILE list|revoke`: session administration for the Redis store.

`list [--user EMAIL] [--json]` prints id, user, created, last check and expiry of each live session;
`revoke (--user EMAIL | --id ID | --all) [--centralauth]` ends them on every replica and worker at once
(see `authproxy.session.admin`), and with `--centralauth` ends their CentralAuth sessions too.

Each action is an audit event (`admin.sessions_listed`, `admin.session_revoked`), written to stderr in
the config's log format; results go to stdout. Exit codes: 0 done; 1 Redis unreachable, no session
with that id, or a CentralAuth logout that failed (the sessions are revoked here all the same); 2 an
invalid config, or a store other than Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from authproxy import audit, logs
from authproxy.config import Config
from authproxy.core.seal import Sealer

if TYPE_CHECKING:
    from authproxy.session import admin

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
# Every wait of the command has a bound: a Redis or CentralAuth that does not answer is an error line.
TIMEOUT = 30.0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sessions = commands.add_parser("sessions", help="list or revoke sessions (Redis store)")
    sessions.add_argument("-c", "--config", required=True, metavar="FILE", help="TOML config file")
    actions = sessions.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="show id, user, created, last check and expiry")
    listing.add_argument("--user", metavar="EMAIL", help="only this user's sessions")
    listing.add_argument("--json", action="store_true", help="print one JSON array")
    revoking = actions.add_parser("revoke", help="end sessions on every replica and worker now")
    which = revoking.add_mutually_exclusive_group(required=True)
    which.add_argument("--user", metavar="EMAIL", help="every session of this user")
    which.add_argument("--id", metavar="ID", help="the session with this id (from `list`)")
    which.add_argument("--all", action="store_true", help="every session")
    revoking.add_argument(
        "--centralauth", action="store_true", help="also end the CentralAuth sessions (session-wide logout)"
    )


def run(args: argparse.Namespace, config: Config) -> int:
    """The command, for a config already loaded (the command line reports an invalid one)."""
    if config.session.store != "redis":
        print(
            'session.store: `authproxy sessions` needs the Redis store (store = "redis"); '
            "cookie sessions are kept nowhere but in the browser",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    logs.configure(config.logging.format, config.logging.level)
    try:
        return asyncio.run(asyncio.wait_for(_run(args, config), TIMEOUT))
    except TimeoutError:
        print(f"authproxy sessions: no answer within {TIMEOUT:g} s", file=sys.stderr)
        return EXIT_FAILURE


async def _run(args: argparse.Namespace, config: Config) -> int:
    from redis.exceptions import RedisError

    from authproxy.session import admin
    from authproxy.session.redis import client_for

    client = client_for(config.session)
    try:
        if args.action == "list":
            found = await admin.sessions(client, args.user)
            scope = "user" if args.user else "all"
            audit.event("admin.sessions_listed", "", by="cli", scope=scope, count=len(found))
            _print_list(found, args.json)
            return EXIT_OK
        if args.id is not None:
            chosen = [info for info in await admin.sessions(client) if info.id == args.id.lower()]
            if not chosen:
                print(f"authproxy sessions: no session with id {args.id}", file=sys.stderr)
                return EXIT_FAILURE
        else:
            chosen = await admin.sessions(client, None if args.all else args.user)
        count = await admin.revoke(client, chosen)
    except (RedisError, OSError) as exc:
        print(f"authproxy sessions: redis unreachable ({type(exc).__name__}: {exc})", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        await client.aclose()
    for info in chosen:
        # `session` is the fingerprint the proxy's own events give the session (`logs.fingerprint`).
        audit.event(
            "admin.session_revoked",
            "",
            by="cli",
            id=info.id,
            session=info.token_digest[:12],
            user=info.user_id,
            centralauth=args.centralauth,
        )
    print(f"revoked {count} session{'s' if count != 1 else ''}")
    if not args.centralauth or not chosen:
        return EXIT_OK
    return await _end_at_centralauth(config, chosen)


async def _end_at_centralauth(config: Config, chosen: list[admin.SessionInfo]) -> int:
    from authproxy.h1 import Pool
    from authproxy.provider.client import CentralAuthClient
    from authproxy.session import admin
    from authproxy.session.redis import admin_purpose

    centralauth = config.centralauth
    sealer = Sealer([secret.get_secret_value() for secret in config.session.cookie_secrets])
    purpose = admin_purpose(config.session.cookie_name)
    pool = Pool(limit=4, acquire_timeout=centralauth.timeout)
    try:
        client = CentralAuthClient(
            pool,
            base_url=centralauth.base_url,
            client_id=centralauth.client_id,
            client_secret=centralauth.client_secret.get_secret_value(),
            public_url=config.server.public_url,
            timeout=centralauth.timeout,
        )
        failed = await admin.end_at_centralauth(chosen, sealer, purpose, client.logout)
    finally:
        await pool.close()
    for info, reason in failed:
        audit.event("admin.centralauth_logout_failed", "", by="cli", id=info.id, reason=reason)
        print(
            f"authproxy sessions: {info.id} ({info.user}): CentralAuth logout failed: {reason}",
            file=sys.stderr,
        )
    ended = len(chosen) - len(failed)
    print(f"ended {ended} CentralAuth session{'s' if ended != 1 else ''}")
    return EXIT_FAILURE if failed else EXIT_OK


def _print_list(found: list[admin.SessionInfo], as_json: bool) -> None:
    if as_json:
        print(json.dumps([info.public() for info in found], indent=2))
        return
    rows = [("ID", "USER", "CREATED", "LAST CHECK", "EXPIRES")]
    rows += [
        (info.id, info.user, _when(info.created), _when(info.last_check), _when(info.expires))
        for info in found
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _when(moment: float | None) -> str:
    if moment is None:
        return "-"
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

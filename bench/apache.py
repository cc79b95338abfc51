"""Apache httpd with mod_auth_openidc: a real OpenID Connect reverse proxy, measured beside authproxy.

Debian's `apache2` runs in the foreground with a complete configuration of its own (`-f`): its own
ServerRoot, pid file, logs and runtime directory in the run's work directory, and only the modules it
needs, loaded by absolute path, so /etc/apache2 and the system service stay untouched. It signs users
in at `bench/oidc_provider.py`, configured statically (no OIDCProviderMetadataURL: mod_auth_openidc
2.4.12 parses the discovery document again on every request with it, its worst case), and proxies
`/` to the same nginx upstream as every other proxy, reusing upstream connections.

Two servers, both measured: `apache-cookie` keeps the session in the browser (`OIDCSessionType
client-cookie`: every request decrypts it), `apache-shm` keeps it in the shared-memory cache
(`server-cache` with `OIDCCacheType shm`: every request looks its id up). Each is the event MPM sized
for two cores: 2 processes of 64 threads each. The access log is on and buffered, as authproxy's is.

mod_auth_openidc refreshes a session's inactivity timestamp (saving the session again: a Set-Cookie
with client-cookie sessions, a cache write with server-cache ones) once the last save is older than
10 % of OIDCSessionInactivityTimeout, 60 s at most. The harness therefore signs in afresh right before
every measured run (`sign_in`), which keeps each run well inside that minute, and the timeouts are long
enough that no session expires.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import ssl
import subprocess
from pathlib import Path

import aiohttp

from bench import oidc_provider, servers
from bench.servers import Server

APACHE = shutil.which("apache2") or "/usr/sbin/apache2"
MODULES = Path("/usr/lib/apache2/modules")
OPENIDC = MODULES / "mod_auth_openidc.so"
PACKAGE = "libapache2-mod-auth-openidc"
VARIANTS = {
    "apache-cookie": "client-cookie",
    "apache-shm": "server-cache",
}
CALLBACK = "/oidc/callback"
SESSION_COOKIE = "mod_auth_openidc_session"
PROCESSES = 2
THREADS = 64

# Statically linked into Debian's binary: core, so, watchdog, http_core, log_config, logio, version,
# unixd. mpm_event and the rest come from here.
_LOADED = (
    "mpm_event",
    "authn_core",  # AuthType
    "authz_core",  # Require
    "authz_user",  # Require valid-user
    "proxy",
    "proxy_http",
)

_CONF = """\
ServerRoot "{dir}"
DefaultRuntimeDir "{dir}"
PidFile "{dir}/httpd.pid"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
{user}
{modules}
LoadModule auth_openidc_module {openidc}

StartServers {processes}
ServerLimit {processes}
ThreadLimit {threads}
ThreadsPerChild {threads}
MaxRequestWorkers {workers}
MinSpareThreads {threads}
MaxSpareThreads {workers}
MaxConnectionsPerChild 0
ListenBacklog 4096
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 75
Timeout 60

ErrorLog "{dir}/error.log"
LogLevel warn
LogFormat "%h %l %u %t \\"%r\\" %>s %b \\"%{{Referer}}i\\" \\"%{{User-Agent}}i\\" %D" timed
BufferedLogs On
CustomLog "{dir}/access.log" timed

OIDCProviderIssuer {issuer}
OIDCProviderAuthorizationEndpoint {issuer}/authorize
OIDCProviderTokenEndpoint {issuer}/token
OIDCProviderTokenEndpointAuth client_secret_post
OIDCProviderJwksUri {issuer}/jwks
OIDCCABundlePath {ca}
OIDCClientID {client_id}
OIDCClientSecret {client_secret}
OIDCRedirectURI http://127.0.0.1:{port}{callback}
OIDCCryptoPassphrase {passphrase}
OIDCScope "openid email"
OIDCSessionType {session_type}
OIDCCacheType shm
OIDCSessionInactivityTimeout 86400
OIDCSessionMaxDuration 86400
OIDCPassClaimsAs headers

ProxyPass {callback} !
ProxyPass / http://127.0.0.1:{upstream_port}/
<Location />
    AuthType openid-connect
    Require valid-user
</Location>
"""


def available() -> bool:
    return Path(APACHE).is_file() and OPENIDC.is_file()


def version() -> str:
    """`Apache/2.4.x (Debian), mod_auth_openidc 2.4.12.x` as installed."""
    server = subprocess.run([APACHE, "-v"], capture_output=True, text=True, check=False).stdout
    name = next((line.split(":", 1)[1].strip() for line in server.splitlines() if "version" in line), "")
    module = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", PACKAGE], capture_output=True, text=True, check=False
    ).stdout.strip()
    return f"{name or 'Apache'}, mod_auth_openidc {module or 'unknown version'}"


def config(
    directory: Path,
    *,
    port: int,
    upstream_port: int,
    issuer: str,
    ca: Path,
    client_id: str,
    client_secret: str,
    session_type: str,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    # Started as root, Apache serves from an unprivileged user; the parent opens the logs beforehand.
    user = "User www-data\nGroup www-data" if os.geteuid() == 0 else ""
    modules = "\n".join(f"LoadModule {name}_module {MODULES / f'mod_{name}.so'}" for name in _LOADED)
    path = directory / "httpd.conf"
    path.write_text(
        _CONF.format(
            dir=directory,
            port=port,
            user=user,
            modules=modules,
            openidc=OPENIDC,
            processes=PROCESSES,
            threads=THREADS,
            workers=PROCESSES * THREADS,
            issuer=issuer,
            ca=ca,
            client_id=client_id,
            client_secret=client_secret,
            callback=CALLBACK,
            passphrase=secrets.token_hex(32),
            session_type=session_type,
            upstream_port=upstream_port,
        )
    )
    return path


def ca_file(work: Path) -> Path:
    """The provider's self-signed certificate, which Apache and the sign-in client trust."""
    return work / "oidc-provider" / "cert.pem"


def provider(work: Path, client_id: str, client_secret: str) -> Server:
    """bench/oidc_provider.py on HTTPS (its certificate made now, so Apache's config can name it)."""
    cert, key = oidc_provider.write_tls(ca_file(work).parent)
    return servers.python_module(
        "oidc-provider", "bench.oidc_provider", work, "--client-id", client_id,
        "--client-secret", client_secret, "--tls-cert", str(cert), "--tls-key", str(key),
        ready="oidc_provider.ready",
    )  # fmt: skip


def issuer(idp: Server) -> str:
    return f"https://127.0.0.1:{idp.port}"


def server(
    name: str, work: Path, upstream_port: int, idp: Server, client_id: str, client_secret: str
) -> Server:
    """One Apache (`name` one of VARIANTS) in the foreground; its tree is the parent and its children."""
    port = servers.free_port()
    path = config(
        work / name,
        port=port,
        upstream_port=upstream_port,
        issuer=issuer(idp),
        ca=ca_file(work),
        client_id=client_id,
        client_secret=client_secret,
        session_type=VARIANTS[name],
    )
    return Server(name, [APACHE, "-f", str(path), "-DFOREGROUND"], port, work / f"{name}.log")


async def _sign_in(http: aiohttp.ClientSession, url: str) -> str:
    """GET url → 302 to the provider → 302 to the callback → Apache redeems the code → 302 to url → 200."""
    http.cookie_jar.clear()
    async with http.get(url) as response:
        await response.read()
        hops = [str(hop.url) for hop in response.history]
        if response.status != 200 or len(hops) < 3 or CALLBACK not in hops[2]:
            raise RuntimeError(f"sign-in at {url} ended with {response.status} after {hops}")
    # The session cookie, or its chunks with client-cookie sessions; not the spent (emptied) state cookie.
    cookies = [
        f"{cookie.key}={cookie.value}"
        for cookie in http.cookie_jar
        if cookie.key.startswith(SESSION_COOKIE) and cookie.value
    ]
    if not cookies:
        raise RuntimeError(f"sign-in at {url} set no session cookie")
    return "; ".join(cookies)


def sign_in(server_url: str, count: int, user_agent: str, ca: Path, path: str = "/1k") -> list[str]:
    """`count` fresh sessions signed in through Apache and the provider; Cookie header values."""

    async def all_of_them() -> list[str]:
        jar = aiohttp.CookieJar(unsafe=True)
        headers = {"User-Agent": user_agent, "Accept": "text/html"}
        connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=ca))
        async with aiohttp.ClientSession(cookie_jar=jar, headers=headers, connector=connector) as http:
            return [await _sign_in(http, server_url + path) for _ in range(count)]

    return asyncio.run(all_of_them())


def cookie_file(server: Server, count: int, user_agent: str, work: Path) -> Path:
    """Fresh sessions for one measured run, one Cookie header value per line (wrk's cookie rotation)."""
    path = work / f"{server.name}-sessions.txt"
    path.write_text("\n".join(sign_in(server.url, count, user_agent, ca_file(work))) + "\n")
    return path

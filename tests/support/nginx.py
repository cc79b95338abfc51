"""Real nginx running `deploy/nginx/authproxy.conf` on loopback, for end-to-end tests of that example.

`start_nginx()` renders the example file itself, not a copy: the only edits are the ones `site_edits()`
lists (listen addresses, certificate paths, upstream addresses), and each must match exactly once, so
an edit to the example that the test can no longer follow fails loudly. It then runs nginx in the
foreground with `-c <main.conf> -p <dir>`, where the small main config puts every file nginx writes
(pid, logs, temporary bodies) in that private directory: the test runs as root or not and never
touches /etc or /var. The site is served over TLS, as in production, with a throwaway CA from
`site_tls()`; clients trust it by passing `ssl=site_tls().client_context` with each request.

`start_nginx(cached=True)` runs `deploy/nginx/authproxy-cached.conf` instead, the same site with nginx
caching authproxy's answers; its extra edits (`cache_edits()`) move the cache directory into the
private one and, when asked, shorten the cache lifetime.

nginx is a hard requirement of these tests (CI installs Debian's `nginx` package): when it is missing
they fail with the install command rather than skip.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from support.harness import free_port
from support.listening import wait_until_listening
from support.servers import ServerProcess, apply_edits

SITE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "authproxy.conf"
CACHED_SITE = SITE.with_name("authproxy-cached.conf")
# The cached site's lines that cache_edits() replaces.
CACHE_DIRECTORY = "/var/cache/nginx-authproxy"
CACHE_VALID = "proxy_cache_valid      200 202 10s;"
DEBIAN_NGINX = "/usr/sbin/nginx"
NGINX_ENV = "AUTHPROXY_TEST_NGINX"
MISSING_NGINX = (
    f"nginx is required by tests/test_nginx.py and was not found (looked at ${NGINX_ENV}, "
    f"{DEBIAN_NGINX} and PATH). Install it with `apt-get install -y nginx` (Debian/Ubuntu), or set "
    f"{NGINX_ENV} to an nginx binary built with the auth_request module. These tests never skip."
)
START_TIMEOUT = 10.0

# The main config around the example site. `daemon off` keeps nginx in the foreground as our child;
# the *_temp_path lines replace the compiled-in /var/lib/nginx paths.
MAIN_CONF = """\
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;

events {{
    worker_connections 256;
}}

http {{
{log}
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    include {dir}/{site};
}}
"""


def main_conf(
    directory: Path, site: str = "authproxy.conf", log: str = "access_log {dir}/access.log;"
) -> str:
    """nginx's main config in `directory`, around the site file `site` there; `log`: the http
    context's logging lines (`{dir}` is the directory)."""
    lines = "\n".join("    " + line for line in log.format(dir=directory).splitlines())
    return MAIN_CONF.format(dir=directory, site=site, log=lines)


def nginx_binary() -> str:
    """The nginx to run: $AUTHPROXY_TEST_NGINX, else Debian's /usr/sbin/nginx, else `nginx` on PATH."""
    configured = os.environ.get(NGINX_ENV)
    candidates = [configured] if configured else [DEBIAN_NGINX, shutil.which("nginx")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(MISSING_NGINX, pytrace=False)


@dataclass(frozen=True)
class SiteTLS:
    """A throwaway CA and a server certificate for 127.0.0.1 that it signed, all PEM."""

    ca: bytes
    cert: bytes
    key: bytes

    @functools.cached_property
    def client_context(self) -> ssl.SSLContext:
        """What a client passes as `ssl=` to trust the test nginx (and only it)."""
        return ssl.create_default_context(cadata=self.ca.decode("ascii"))


@functools.cache
def site_tls() -> SiteTLS:
    """One CA and certificate per test session; EC keys keep generating them cheap."""
    now = datetime.now(UTC)
    not_before, not_after = now - timedelta(hours=1), now + timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "authproxy test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder(
            issuer_name=ca_name, subject_name=ca_name, not_valid_before=not_before, not_valid_after=not_after
        )
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    cert = (
        x509.CertificateBuilder(
            issuer_name=ca_name, subject_name=subject, not_valid_before=not_before, not_valid_after=not_after
        )
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem = serialization.Encoding.PEM
    return SiteTLS(ca.public_bytes(pem), cert.public_bytes(pem), key_pem)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def site_edits(
    *, https_port: int, http_port: int, authproxy: str, app: str, cert: Path, key: Path
) -> dict[str, str]:
    """Every change made to the example to run it here: `text in the example` -> `its replacement`."""
    return {
        "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "server 127.0.0.1:4180;": f"server {authproxy};",
        "server 127.0.0.1:8080;": f"server {app};",
        "/etc/ssl/certs/app.example.com.pem": str(cert),
        "/etc/ssl/private/app.example.com.key": str(key),
    }


def cache_edits(directory: Path, lifetime: int | None) -> dict[str, str]:
    """The cached site's extra edits: its cache in `directory`, and a lifetime of `lifetime` seconds
    (whole seconds: nginx keeps cache validity in seconds)."""
    edits = {CACHE_DIRECTORY: str(directory)}
    if lifetime is not None:
        edits[CACHE_VALID] = CACHE_VALID.replace("10s", f"{lifetime}s")
    return edits


def render_site(text: str, edits: dict[str, str], site: Path = SITE) -> str:
    return apply_edits(text, edits, site, "tests/support/nginx.py:site_edits()")


@dataclass
class Nginx(ServerProcess):
    """A running nginx serving the example site at `url` (https://127.0.0.1:<port>)."""


def write_site_tls(directory: Path) -> tuple[Path, Path]:
    """The site's certificate and key as `site.crt` and `site.key` in `directory`."""
    tls = site_tls()
    cert, key = directory / "site.crt", directory / "site.key"
    cert.write_bytes(tls.cert)
    key.write_bytes(tls.key)
    return cert, key


def _prepare(
    *, https_port: int, authproxy: str, app: str, cached: bool, cache_lifetime: int | None
) -> tuple[Path, Path, IO[bytes]]:
    """Make nginx's directory and write the certificate, the rendered site and the main config there.

    Returns the directory, the main config's path and a file for nginx's stderr, where it reports what
    goes wrong before it has read its own error_log directive.
    """
    directory = Path(tempfile.mkdtemp(prefix="authproxy-nginx-"))
    # When run as root nginx's workers drop to an unprivileged user, who must still reach the temp dirs.
    directory.chmod(0o755)
    cert, key = write_site_tls(directory)
    edits = site_edits(
        https_port=https_port, http_port=free_port(), authproxy=authproxy, app=app, cert=cert, key=key
    )
    site = CACHED_SITE if cached else SITE
    if cached:
        edits |= cache_edits(directory / "auth-cache", cache_lifetime)
    (directory / "authproxy.conf").write_text(render_site(site.read_text(), edits, site))
    main = directory / "nginx.conf"
    main.write_text(main_conf(directory))
    return directory, main, (directory / "stderr.log").open("wb")


async def start_nginx(
    *,
    https_port: int,
    authproxy_url: str,
    app_url: str,
    cached: bool = False,
    cache_lifetime: int | None = None,
) -> Nginx:
    """Run the example site on 127.0.0.1:`https_port` in front of these http:// URLs: authproxy.conf, or
    with `cached` authproxy-cached.conf (its answers kept `cache_lifetime` seconds, default the file's)."""
    binary = nginx_binary()
    authproxy, app = urlsplit(authproxy_url).netloc, urlsplit(app_url).netloc
    directory, main, stderr = _prepare(
        https_port=https_port, authproxy=authproxy, app=app, cached=cached, cache_lifetime=cache_lifetime
    )
    with stderr:
        process = await asyncio.create_subprocess_exec(
            binary,
            "-c",
            str(main),
            "-p",
            f"{directory}/",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
        )
    nginx = Nginx(f"https://127.0.0.1:{https_port}", directory, process)
    try:
        await wait_until_listening(
            "nginx", nginx.process, https_port, lambda: nginx.log("stderr.log") + nginx.log(), START_TIMEOUT
        )
    except BaseException:
        await nginx.stop()
        raise
    return nginx

"""A real nginx, configured as ingress-nginx configures it from `deploy/kubernetes/ingress-nginx.yaml`.

ingress-nginx is a controller that writes nginx's configuration from Ingress objects; it cannot run
here, but the nginx it drives can. `render_site()` reads the example's two Ingresses and writes, for
their host, what ingress-nginx's template (rootfs/etc/nginx/template/nginx.tmpl, controller v1.x)
writes for these annotations:

- the auth location (`/_external-auth-<base64 of the path>`, `internal`) with the headers ingress-nginx
  sets there: `Host` = the auth-url's host, `X-Original-URL: $scheme://$http_host$request_uri`,
  `X-Original-Method`, `X-Sent-From: nginx-ingress-controller`, `X-Real-IP`, `X-Forwarded-For`,
  `X-Auth-Request-Redirect: $request_uri`, `X-Forwarded-Proto` cleared, no body, and every other
  client header passed on (`proxy_pass_request_headers on`), then `proxy_pass` to the auth-url;
- the sign-in location (`@<sha1>`) that answers 302 to auth-signin with
  `rd=$pass_access_scheme://$http_host$escaped_request_uri` added (`buildAuthSignURL`);
- the app's location: `auth_request`, `auth_request_set $authHeaderN` + `proxy_set_header` for each of
  auth-response-headers (`buildAuthResponseHeaders`), `error_page 401` to the sign-in location, and the
  proxy headers ingress-nginx sends upstream;
- the authproxy Ingress's `/oauth2/` location, proxied with the same upstream headers.

The test's only departures: addresses (loopback ports for the controller, the app's Service and
authproxy's Service, whose in-cluster name stays the `Host` of the auth request), a throwaway TLS
certificate (`support.nginx.site_tls()`), and `$escaped_request_uri`, which ingress-nginx computes with
the set-misc module's `set_escape_uri`: Debian's nginx lacks it, so the path goes unencoded (the tests
use return paths that need no encoding). The main config logs subrequests, so a test can read
authproxy's status for each check in `access.log` (`auth <uri> <status>`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from support.listening import wait_until_listening
from support.nginx import main_conf, nginx_binary, write_site_tls
from support.servers import ServerProcess

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "ingress-nginx.yaml"
ANNOTATION = "nginx.ingress.kubernetes.io/"
START_TIMEOUT = 10.0

# Which location answered each request, subrequests included (the tests read the access log).
ACCESS_LOG = """\
log_format checks '$request_method $uri $status upstream=$upstream_status';
log_subrequest on;
access_log {dir}/access.log checks;
"""

# What ingress-nginx sends upstream from every location (the app's and authproxy's).
UPSTREAM_HEADERS = """\
        proxy_http_version 1.1;
        proxy_set_header Host $best_http_host;
        proxy_set_header X-Request-ID $request_id;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Host $best_http_host;
        proxy_set_header X-Forwarded-Port $pass_port;
        proxy_set_header X-Forwarded-Proto $pass_access_scheme;
        proxy_set_header X-Scheme $pass_access_scheme;
        proxy_set_header X-Original-Forwarded-For $http_x_forwarded_for;
        proxy_set_header Proxy "";
"""

LOCATION_VARIABLES = """\
        set $pass_access_scheme $scheme;
        set $pass_server_port $server_port;
        set $best_http_host $http_host;
        set $pass_port $pass_server_port;
"""


@dataclass(frozen=True)
class ExternalAuth:
    """The example's annotations, and where its two Ingresses route."""

    host: str
    app_path: str
    auth_url: str
    signin_url: str
    response_headers: list[str]
    authproxy_path: str


def read_example(path: Path = EXAMPLE) -> ExternalAuth:
    """The Ingress with `auth-url` (the app's) and the one without (authproxy's own pages)."""
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    ingresses = [doc for doc in docs if doc["kind"] == "Ingress"]
    guarded = [doc for doc in ingresses if ANNOTATION + "auth-url" in doc["metadata"].get("annotations", {})]
    open_ = [doc for doc in ingresses if doc not in guarded]
    assert len(guarded) == 1 and len(open_) == 1, "expected one guarded Ingress and one for authproxy"
    annotations: dict[str, str] = guarded[0]["metadata"]["annotations"]
    (rule,) = guarded[0]["spec"]["rules"]
    (own,) = open_[0]["spec"]["rules"]
    assert own["host"] == rule["host"], "authproxy's pages must be on the app's host"
    return ExternalAuth(
        host=rule["host"],
        app_path=_one_path(rule),
        auth_url=annotations[ANNOTATION + "auth-url"],
        signin_url=annotations[ANNOTATION + "auth-signin"],
        response_headers=[h.strip() for h in annotations[ANNOTATION + "auth-response-headers"].split(",")],
        authproxy_path=_one_path(own),
    )


def _one_path(rule: dict[str, Any]) -> str:
    (path,) = rule["http"]["paths"]
    assert path["pathType"] == "Prefix", path
    return str(path["path"])


def auth_location(path: str) -> str:
    """ingress-nginx's buildAuthLocation."""
    encoded = base64.urlsafe_b64encode(path.encode()).decode().replace("=", "")
    return f"/_external-auth-{encoded}"


def sign_in_url(signin: str, param: str = "rd") -> str:
    """ingress-nginx's buildAuthSignURL: the return URL is added unless the URL already carries one."""
    query = urlsplit(signin).query
    if not query:
        return f"{signin}?{param}=$pass_access_scheme://$http_host$escaped_request_uri"
    if any(part.split("=", 1)[0] == param for part in query.split("&")):
        return signin
    return f"{signin}&{param}=$pass_access_scheme://$http_host$escaped_request_uri"


def render_site(example: ExternalAuth, *, port: int, authproxy: str, app: str, cert: Path, key: Path) -> str:
    """The server ingress-nginx would write for the example, on 127.0.0.1:`port`, with the app's and
    authproxy's Services at these host:port addresses."""
    auth = urlsplit(example.auth_url)
    target = f"http://{authproxy}{auth.path}" + (f"?{auth.query}" if auth.query else "")
    auth_path = auth_location(example.app_path)
    sign_in = "@" + hashlib.sha1((example.app_path + example.signin_url).encode()).hexdigest()
    response_headers = "".join(
        f"        auth_request_set $authHeader{index} $upstream_http_{name.lower().replace('-', '_')};\n"
        f"        proxy_set_header '{name}' $authHeader{index};\n"
        for index, name in enumerate(example.response_headers)
    )
    return f"""\
upstream app_service {{
    server {app};
}}

upstream authproxy_service {{
    server {authproxy};
}}

server {{
    listen 127.0.0.1:{port} ssl;
    server_name {example.host};
    ssl_certificate {cert};
    ssl_certificate_key {key};

    location = {auth_path} {{
        internal;
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        proxy_set_header X-Forwarded-Proto "";
        proxy_set_header X-Request-ID $request_id;
        proxy_set_header Host {auth.hostname};
        proxy_set_header X-Original-URL $scheme://$http_host$request_uri;
        proxy_set_header X-Original-Method $request_method;
        proxy_set_header X-Sent-From "nginx-ingress-controller";
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Auth-Request-Redirect $request_uri;
        proxy_http_version 1.1;
        proxy_pass_request_headers on;
        set $target {target};
        proxy_pass $target;
    }}

    location {sign_in} {{
        internal;
        add_header Set-Cookie $auth_cookie;
        return 302 {sign_in_url(example.signin_url)};
    }}

    location {example.authproxy_path} {{
{LOCATION_VARIABLES}
{UPSTREAM_HEADERS}
        proxy_pass http://authproxy_service;
    }}

    location {example.app_path} {{
{LOCATION_VARIABLES}
        auth_request {auth_path};
        auth_request_set $auth_cookie $upstream_http_set_cookie;
        add_header Set-Cookie $auth_cookie;
{response_headers}
        set $escaped_request_uri $request_uri;
        error_page 401 = {sign_in};

{UPSTREAM_HEADERS}
        proxy_pass http://app_service;
    }}
}}
"""


@dataclass
class IngressNginx(ServerProcess):
    """A running nginx serving the rendered site at `url` (https://127.0.0.1:<port>)."""

    def checks(self) -> list[str]:
        """The auth subrequests nginx made, oldest first: `GET /_external-auth-... 202 upstream=202`."""
        return [line for line in self.log("access.log").splitlines() if "/_external-auth-" in line]


def _prepare(*, port: int, authproxy: str, app: str) -> tuple[Path, Path]:
    """nginx's private directory with the certificate, the rendered site and the main config in it."""
    directory = Path(tempfile.mkdtemp(prefix="authproxy-ingress-nginx-"))
    directory.chmod(0o755)  # nginx's workers drop to an unprivileged user when run as root
    cert, key = write_site_tls(directory)
    site = render_site(read_example(), port=port, authproxy=authproxy, app=app, cert=cert, key=key)
    (directory / "site.conf").write_text(site)
    main = directory / "nginx.conf"
    main.write_text(main_conf(directory, "site.conf", ACCESS_LOG))
    return directory, main


async def start_ingress_nginx(*, port: int, authproxy: str, app: str) -> IngressNginx:
    """The example's Ingresses, as ingress-nginx would serve them, on 127.0.0.1:`port`."""
    binary = nginx_binary()
    directory, main = _prepare(port=port, authproxy=authproxy, app=app)
    with (directory / "stderr.log").open("wb") as stderr:
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
    nginx = IngressNginx(f"https://127.0.0.1:{port}", directory, process)
    try:
        await wait_until_listening(
            "nginx", process, port, lambda: nginx.log("stderr.log") + nginx.log(), START_TIMEOUT
        )
    except BaseException:
        await nginx.stop()
        raise
    return nginx

"""Typed configuration: the TOML file, `AUTHPROXY_<SECTION>__<KEY>` overrides and `*_file` secrets.

`load(path)` is the only entry point. Every problem is reported as one line that starts with the dotted
key it concerns (`session.cookie_secrets: ...`), collected in a `ConfigError`; a value that came from
the environment says so (`(from AUTHPROXY_SERVER__TRUSTED_PROXIES)`). Secrets are `SecretStr` and never
appear in a message. Obvious placeholders (`CHANGE-ME`, `YOUR-ORGANIZATION-ID`, see config_checks.py)
are refused where a client ID or secret belongs.

The environment is read here rather than by pydantic-settings' own source so that a bad value there is
one line naming its key and variable, like a bad value in the file, instead of an exception; and so that
lists also take the comma-separated form operators write by hand (`10.0.0.0/8,192.168.0.0/16`).
"""

from __future__ import annotations

import difflib
import importlib.util
import ipaddress
import json
import os
import re
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from authproxy.config_checks import client_id_problem, is_placeholder
from authproxy.core import routing
from authproxy.core.paths import parse_route_rule
from authproxy.core.redirect import RedirectPolicy
from authproxy.errors import ConfigError

__all__ = ["Config", "ConfigError", "load"]

ENV_PREFIX = "AUTHPROXY_"
MIN_COOKIE_SECRET_LENGTH = 32
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- reusable field validators -------------------------------------------------------------------------


def split_host_port(value: str) -> tuple[str, int]:
    """Split `host:port` or `[v6]:port`; raise ValueError with a user-facing message otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not re.fullmatch(r"[0-9]{1,5}", port):
        raise ValueError(f"expected host:port, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address must be bracketed, as in [::1]:4180, got {value!r}")
    if not 0 < int(port) < 65536:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    return host, int(port)


def _listen(value: str) -> str:
    split_host_port(value)
    return value


def _optional_listen(value: str) -> str:
    return _listen(value) if value else value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an absolute http:// or https:// URL, got {value!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials")
    return value.rstrip("/")


def _origin_url(value: str) -> str:
    value = _http_url(value)
    parts = urlsplit(value)
    if parts.path or parts.query or parts.fragment:
        raise ValueError(f"must be an origin without path, query or fragment, got {value!r}")
    return value


def _abs_path(value: str) -> str:
    if not value.startswith("/") or value.startswith("//"):
        raise ValueError(f"must start with a single '/', got {value!r}")
    return value


def _upstream_url(value: str) -> str:
    # A sidecar's app on a Unix socket: unix:///path/app.sock (an absolute path, nothing else).
    if value.startswith("unix:"):
        path = value.removeprefix("unix://")
        if not value.startswith("unix:///") or "?" in path or "#" in path or path.endswith("/"):
            raise ValueError(f"a Unix socket upstream is written unix:///absolute/path.sock, got {value!r}")
        return value
    return _http_url(value)


def _readable_file(value: str) -> str:
    if value and not Path(value).is_file():
        raise ValueError(f"no such file: {value!r}")
    return value


HostPort = Annotated[str, AfterValidator(_listen)]
UpstreamUrl = Annotated[str, AfterValidator(_upstream_url)]
FilePath = Annotated[str, AfterValidator(_readable_file)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
OriginUrl = Annotated[str, AfterValidator(_origin_url)]
AbsPath = Annotated[str, AfterValidator(_abs_path)]
Seconds = Annotated[float, Field(gt=0)]


def _cidr(value: Any) -> IPNetwork:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR such as 10.0.0.0/8") from None


def _route_rule(rule: str) -> str:
    try:
        parse_route_rule(rule)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {rule!r}: {exc}") from None
    return rule


def _redirect_domain(value: str) -> str:
    # The redirect validator's own parser decides, so config and runtime can never disagree.
    try:
        RedirectPolicy("https://config.invalid", (value,))
    except ValueError as exc:
        raise ValueError(str(exc).removeprefix("redirects.allowed_domains: ")) from None
    return value.lower()


RouteRule = Annotated[str, AfterValidator(_route_rule)]


def _header_name(value: str) -> str:
    # RFC 9110 token characters: anything else could never match a header the proxy receives.
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
        raise ValueError(f"not a header name: {value!r}")
    return value


HeaderName = Annotated[str, AfterValidator(_header_name)]
RedirectDomain = Annotated[str, AfterValidator(_redirect_domain)]


def _read_secret_file(path: Path, key: str = "") -> str:
    """The file's text; `key` prefixes the error when a model validator (not the field's own) reads it."""
    prefix = f"{key}: " if key else ""
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"{prefix}cannot read {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{prefix}{str(path)!r} is not UTF-8 text") from None


def _raise_all(problems: list[str]) -> None:
    """Raise every problem of one value as its own error (a ValueError could carry only one)."""
    if len(problems) == 1:
        raise ValueError(problems[0])
    if problems:
        details = [
            InitErrorDetails(
                type=PydanticCustomError("value_error", "{problem}", {"problem": problem}),
                loc=(),
                input=None,
            )
            for problem in problems
        ]
        raise ValidationError.from_exception_data("config", details)


def _cookie_secret_problem(secret: str, which: str) -> str | None:
    if is_placeholder(secret):
        return f"{which} is a placeholder (`authproxy gen-secret` makes one)"
    if len(secret) < MIN_COOKIE_SECRET_LENGTH:
        shorter = f"is shorter than {MIN_COOKIE_SECRET_LENGTH} characters"
        return f"{which} {shorter} (`authproxy gen-secret` makes one)"
    return None


# --- sections ------------------------------------------------------------------------------------------


class Section(BaseModel):
    """A config table: unknown keys are errors and the parsed values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(Section):
    listen: HostPort = "0.0.0.0:4180"
    public_url: HttpUrl
    proxy_prefix: AbsPath = "/oauth2"
    workers: int = Field(1, ge=0, le=256)
    trusted_proxies: list[Annotated[IPNetwork, Field()]] = []
    metrics_listen: Annotated[str, AfterValidator(_optional_listen)] = ""
    shutdown_grace: float = Field(25, ge=0, le=3600)
    # The upstream connection pool of each worker: at most this many connections open at once, idle
    # ones kept this many seconds, and a request that finds the pool full waits this long for a
    # connection before it is answered 503 with Retry-After.
    upstream_connections: int = Field(512, ge=1, le=100_000)
    upstream_keepalive: float = Field(15, ge=0, le=3600)
    upstream_acquire_timeout: Seconds = 5

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_cidrs(cls, value: Any) -> Any:
        return [_cidr(item) for item in value] if isinstance(value, list) else value

    @field_validator("proxy_prefix")
    @classmethod
    def _strip_prefix(cls, value: str) -> str:
        if value == "/":
            raise ValueError("must not be '/', the proxy needs its own path such as '/oauth2'")
        return value.rstrip("/")

    @field_validator("public_url")
    @classmethod
    def _public_origin(cls, value: str) -> str:
        if urlsplit(value).query or urlsplit(value).fragment:
            raise ValueError("must not carry a query or fragment")
        return value


class CentralAuthConfig(Section):
    base_url: OriginUrl = "https://centralauth.com"
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    client_secret_file: Path | None = None
    session_check_ttl: float = Field(30, ge=0, le=3600)
    on_outage: Literal["fail-closed", "stale"] = "fail-closed"
    stale_grace: float = Field(60, ge=0, le=86400)
    timeout: Seconds = 5
    logout_session_wide: bool = True
    cache_max_entries: int = Field(100_000, ge=1, le=10_000_000)
    # `Authorization: Bearer <access token>` (with the client's `device-id`) is a session too, checked
    # with userinfo like a cookie; a route's `bearer` overrides this.
    accept_bearer_tokens: bool = False
    # Serve /api/auth/login, /callback, /user, /logout and /affirm as apps built on CentralAuth's
    # libraries expect them.
    compat_routes: bool = False

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("missing; set it to your CentralAuth organization ID")
        problem = client_id_problem(value.strip())
        if problem:
            raise ValueError(problem)
        return value.strip()

    # The secret's own checks are field validators, so that an unreadable file and the section's
    # other problems are all reported in one run; the model validator only combines the two keys.
    @field_validator("client_secret")
    @classmethod
    def _inline_secret(cls, value: SecretStr) -> SecretStr:
        if is_placeholder(value.get_secret_value()):
            raise ValueError("is a placeholder; paste the client secret from the CentralAuth dashboard")
        return value

    @field_validator("client_secret_file")
    @classmethod
    def _secret_file(cls, value: Path | None) -> Path | None:
        if value is not None and is_placeholder(_read_secret_file(value)):
            raise ValueError(
                f"{str(value)!r} holds a placeholder; put the client secret from the CentralAuth "
                "dashboard in it"
            )
        return value

    @model_validator(mode="after")
    def _secret(self) -> CentralAuthConfig:
        if self.client_secret_file is not None:
            if self.client_secret.get_secret_value():
                raise ValueError("client_secret: set client_secret or client_secret_file, not both")
            secret = _read_secret_file(self.client_secret_file, "client_secret_file")
            object.__setattr__(self, "client_secret", SecretStr(secret))
        if not self.client_secret.get_secret_value():
            raise ValueError("client_secret: missing; set client_secret or client_secret_file")
        return self


class SessionConfig(Section):
    store: Literal["cookie", "redis"] = "cookie"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis Sentinel: the sentinels' "host:port"s and the master's name; `redis_url` then gives only
    # the scheme (redis:// or rediss://) and the db number, its host is not used.
    redis_sentinels: list[HostPort] = []
    redis_sentinel_master: str = ""
    redis_ca_file: FilePath = ""
    redis_username: str = ""
    redis_password: SecretStr = SecretStr("")
    redis_password_file: Path | None = None
    cookie_name: str = Field("_authproxy", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    cookie_secrets: list[SecretStr] = []
    cookie_secret_file: Path | None = None
    cookie_secure: bool = True
    cookie_samesite: Literal["lax", "strict", "none"] = "lax"
    cookie_domain: str = Field("", pattern=r"^(\.?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*)?$")
    max_age: int = Field(86400, gt=0, le=400 * 86400)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("redis_sentinel_master")
    @classmethod
    def _sentinel_master(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", value):
            raise ValueError(f"not a Sentinel master name: {value!r}")
        return value

    @field_validator("redis_password")
    @classmethod
    def _inline_redis_password(cls, value: SecretStr) -> SecretStr:
        if is_placeholder(value.get_secret_value()):
            raise ValueError("is a placeholder; put the Redis user's password here")
        return value

    @field_validator("redis_password_file")
    @classmethod
    def _redis_password_file(cls, value: Path | None) -> Path | None:
        if value is not None and is_placeholder(_read_secret_file(value)):
            raise ValueError(f"{str(value)!r} holds a placeholder; put the Redis user's password in it")
        return value

    # Each secret is judged by its key's own validator, so that every bad one is reported (with an
    # unreadable file and the section's other problems) in one run.
    @field_validator("cookie_secrets")
    @classmethod
    def _inline_secrets(cls, values: list[SecretStr]) -> list[SecretStr]:
        problems = [
            _cookie_secret_problem(secret.get_secret_value(), f"secret #{index}")
            for index, secret in enumerate(values, 1)
        ]
        _raise_all([problem for problem in problems if problem])
        return values

    @field_validator("cookie_secret_file")
    @classmethod
    def _secret_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            secrets = [line.strip() for line in _read_secret_file(value).splitlines() if line.strip()]
            problems = [
                _cookie_secret_problem(secret, f"secret #{number} in {str(value)!r}")
                for number, secret in enumerate(secrets, 1)
            ]
            _raise_all([problem for problem in problems if problem])
        return value

    @model_validator(mode="after")
    def _secrets(self) -> SessionConfig:
        secrets = list(self.cookie_secrets)
        if self.cookie_secret_file is not None:
            text = _read_secret_file(self.cookie_secret_file, "cookie_secret_file")
            secrets += [SecretStr(line.strip()) for line in text.splitlines() if line.strip()]
        if not secrets:
            raise ValueError(
                "cookie_secrets: missing; set cookie_secrets or cookie_secret_file "
                "(`authproxy gen-secret` makes one)"
            )
        if self.cookie_samesite == "none" and not self.cookie_secure:
            raise ValueError("cookie_samesite: 'none' requires cookie_secure = true (browsers drop it)")
        object.__setattr__(self, "cookie_secrets", secrets)
        self._redis_settings()
        return self

    def _redis_settings(self) -> None:
        if self.redis_password_file is not None:
            if self.redis_password.get_secret_value():
                raise ValueError("redis_password: set redis_password or redis_password_file, not both")
            password = _read_secret_file(self.redis_password_file, "redis_password_file")
            object.__setattr__(self, "redis_password", SecretStr(password))
        scheme = urlsplit(self.redis_url).scheme
        if self.redis_sentinels and not self.redis_sentinel_master:
            raise ValueError("redis_sentinel_master: required with redis_sentinels (the master's name)")
        if self.redis_sentinel_master and not self.redis_sentinels:
            raise ValueError("redis_sentinels: required with redis_sentinel_master (their host:port)")
        if self.redis_sentinels and scheme == "unix":
            raise ValueError("redis_url: with redis_sentinels it is redis:// or rediss:// (scheme and db)")
        if self.redis_ca_file and scheme != "rediss":
            raise ValueError("redis_ca_file: applies to a rediss:// redis_url only")


class UpstreamConfig(Section):
    path: AbsPath = "/"
    url: UpstreamUrl
    # The browser's Host reaches the upstream (HTTP and websocket alike), so apps that compare Origin
    # with Host (Django's CSRF check, JupyterLab) and build links from Host work behind the proxy.
    preserve_host: bool = True
    # The wait for the response head once the request body has been sent, and between two reads of
    # the response: the upstream may stay silent this long (nginx's proxy_read_timeout).
    timeout: Seconds = 60
    # Opening a connection (TCP, and the TLS handshake for https).
    connect_timeout: Seconds = 10
    # A client that takes none of the response for this long is cut, freeing the upstream connection.
    send_timeout: Seconds = 60
    # TLS to an https upstream: a CA bundle (PEM) instead of the system's, certificate verification
    # (never turn it off outside a test), the name to verify and send as SNI, and a client certificate.
    ca_file: FilePath = ""
    verify: bool = True
    server_name: str = ""
    client_cert_file: FilePath = ""
    client_key_file: FilePath = ""

    @model_validator(mode="after")
    def _tls_settings(self) -> UpstreamConfig:
        tls = (self.ca_file, not self.verify, self.server_name, self.client_cert_file, self.client_key_file)
        if any(tls) and not self.url.startswith("https://"):
            raise ValueError(
                "ca_file, verify, server_name and client certificates apply to https:// upstreams"
            )
        if bool(self.client_cert_file) != bool(self.client_key_file):
            raise ValueError("client_cert_file and client_key_file go together")
        return self


class RouteConfig(Section):
    """One `[[routes]]` entry (see `core.routing`); its defaults are the global settings'."""

    host: str = ""
    path: str = "/"
    methods: list[str] = []
    upstream: UpstreamUrl | None = None
    auth: Literal["required", "optional", "public"] = "required"
    api: bool = False
    allowed_emails: list[str] = []
    allowed_email_domains: list[str] = []
    require_verified_email: bool = False
    session_check_ttl: float | None = Field(None, ge=0, le=86400)
    step_up_max_age: float | None = Field(None, gt=0)
    strip_prefix: bool = False
    # Bearer tokens on this route: unset = `[centralauth] accept_bearer_tokens`.
    bearer: bool | None = None
    # Forward the client's `Authorization` header to the upstream (it is stripped otherwise).
    pass_authorization: bool = False

    @field_validator("allowed_email_domains", "allowed_emails")
    @classmethod
    def _lower(cls, values: list[str]) -> list[str]:
        return [value.strip().lower().lstrip("@") for value in values]

    @field_validator("methods")
    @classmethod
    def _methods(cls, values: list[str]) -> list[str]:
        for value in values:
            if not re.fullmatch(r"[A-Za-z]+", value):
                raise ValueError(f"{value!r} is not an HTTP method")
        return [value.upper() for value in values]

    @model_validator(mode="after")
    def _route(self) -> RouteConfig:
        try:
            routing.Route.build(0, self.path, host=self.host, strip_prefix=self.strip_prefix)
        except ValueError as exc:
            field = "path" if "path" in str(exc) or "strip_prefix" in str(exc) else "host"
            raise ValueError(f"{field}: {exc}") from None
        restricting = (
            self.step_up_max_age is not None
            or self.allowed_emails
            or self.allowed_email_domains
            or self.require_verified_email
            or self.session_check_ttl is not None
        )
        if self.auth == "public" and restricting:
            raise ValueError(
                "auth: a public route reads no session, so it takes no step-up, allow-list, "
                "require_verified_email or session_check_ttl"
            )
        return self


class RoutesConfig(Section):
    skip_auth: list[RouteRule] = []
    api: list[RouteRule] = []
    # Send each segment's `;parameters` (`;jsessionid=...`) upstream; the rules still judge without them.
    keep_path_parameters: bool = False
    # The `[[routes]]` array of tables, when the file uses that form (TOML cannot hold both forms).
    table: list[RouteConfig] = []


class AuthorizationConfig(Section):
    allowed_email_domains: list[str] = []
    allowed_emails: list[str] = []
    require_verified_email: bool = False
    allow_blocked_users: bool = False

    @field_validator("allowed_email_domains", "allowed_emails")
    @classmethod
    def _lower(cls, values: list[str]) -> list[str]:
        return [value.strip().lower().lstrip("@") for value in values]


class RedirectsConfig(Section):
    allowed_domains: list[RedirectDomain] = []


class WebsocketConfig(Section):
    # The largest message (after reassembly) relayed in either direction; a larger one closes the socket
    # with 1009. Compression is never negotiated, so no message is inflated.
    max_message_size: int = Field(16 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    # Origins a handshake may come from besides the proxy's own public_url; others are refused with 403.
    allowed_origins: list[OriginUrl] = []
    # Seconds after which an open websocket is closed (1008) whatever its session; 0 = no limit.
    max_lifetime: float = Field(0, ge=0)
    # Open websockets per worker; a handshake beyond this is refused with 503.
    max_open: int = Field(1024, ge=1, le=1_000_000)


class HeadersConfig(Section):
    profile: Literal["oauth2-proxy"] = "oauth2-proxy"
    pass_access_token: bool = False
    strip_extra: list[HeaderName] = []
    # A signed statement of the identity (`X-Authproxy-Jwt-Assertion`, ES256) on every authenticated
    # request, so an upstream can tell a request really came through the proxy.
    jwt_assertion: bool = False
    # PEM EC P-256 private keys: the first signs, all are published at {proxy_prefix}/jwks.json.
    jwt_signing_key_file: FilePath = ""
    # The assertion's `aud`; empty = the upstream's origin.
    jwt_audience: str = ""

    @field_validator("jwt_signing_key_file")
    @classmethod
    def _signing_keys(cls, value: str) -> str:
        if value:
            from authproxy.core.signing_keys import read_signing_keys

            read_signing_keys(Path(value).read_bytes())  # ValueError names what is wrong
        return value

    @model_validator(mode="after")
    def _assertion_needs_a_key(self) -> HeadersConfig:
        if self.jwt_assertion and not self.jwt_signing_key_file:
            raise ValueError(
                "jwt_signing_key_file: required with jwt_assertion = true "
                "(make one with `authproxy gen-signing-key`)"
            )
        return self


class ForwardAuthConfig(Section):
    # The status of an allowed check: 202 (nginx, Traefik, Caddy) or 200 (Envoy's ext_authz allows
    # only 200).
    success_status: Literal[200, 202] = 202


def _logo(value: str) -> str:
    on_site = value.startswith("/") and not value.startswith("//")
    if value and not (on_site or value.startswith(("https://", "http://", "data:image/"))):
        raise ValueError("must be an http(s) URL, a path on this site, or a data:image/ URL")
    return value


class BrandingConfig(Section):
    title: str = Field("", max_length=80)
    logo_url: Annotated[str, AfterValidator(_logo)] = ""
    footer: str = Field("", max_length=300)


class LoggingConfig(Section):
    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True

    @field_validator("level", mode="before")
    @classmethod
    def _lower_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


# What `[tracing]` needs at run time: the `otel` extra (`pip install 'authproxy[otel]'`).
OTEL_MODULES = (
    "opentelemetry.trace",
    "opentelemetry.sdk.trace",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
)


def otel_missing() -> str | None:
    """The first module of the `otel` extra that cannot be found, or None when all can.

    Only looks (`find_spec`): nothing of OpenTelemetry is run unless tracing is configured.
    """
    for name in OTEL_MODULES:
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            found = None
        if found is None:
            return name
    return None


class TracingConfig(Section):
    # The OTLP/HTTP collector's base URL, as OTEL_EXPORTER_OTLP_ENDPOINT means it: spans go to
    # <otlp_endpoint>/v1/traces as protobuf. Empty = no tracing (OpenTelemetry is never imported).
    otlp_endpoint: str = ""
    service_name: str = Field("authproxy", min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")
    # The share of traces started here that are recorded; a trusted proxy's sampled trace context
    # keeps its own decision.
    sample_ratio: float = Field(1.0, ge=0, le=1)

    @field_validator("otlp_endpoint")
    @classmethod
    def _collector(cls, value: str) -> str:
        if not value:
            return value
        value = _http_url(value)
        parts = urlsplit(value)
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment (spans go to <otlp_endpoint>/v1/traces)")
        if otel_missing() is not None:
            raise ValueError(
                "tracing needs the OpenTelemetry packages, which are not installed: "
                "pip install 'authproxy[otel]' (or leave otlp_endpoint empty)"
            )
        return value


class Config(BaseSettings):
    """The whole configuration; build it with `load()`, never directly."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    server: ServerConfig
    centralauth: CentralAuthConfig
    session: SessionConfig
    upstreams: list[UpstreamConfig] = Field(min_length=1)
    # `[routes]` (a table: skip_auth, api, keep_path_parameters) or `[[routes]]` (the route table).
    routes: RoutesConfig = RoutesConfig()
    authorization: AuthorizationConfig = AuthorizationConfig()
    redirects: RedirectsConfig = RedirectsConfig()
    headers: HeadersConfig = HeadersConfig()
    forward_auth: ForwardAuthConfig = ForwardAuthConfig()
    websocket: WebsocketConfig = WebsocketConfig()
    logging: LoggingConfig = LoggingConfig()
    branding: BrandingConfig = BrandingConfig()
    tracing: TracingConfig = TracingConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file arrives as init kwargs; the environment must win over it, as operators expect.
        return _EnvironmentSource(settings_cls), init_settings

    @field_validator("routes", mode="before")
    @classmethod
    def _route_table(cls, value: Any) -> Any:
        return {"table": value} if isinstance(value, list) else value

    @field_validator("upstreams")
    @classmethod
    def _unique_paths(cls, upstreams: list[UpstreamConfig]) -> list[UpstreamConfig]:
        paths = [upstream.path for upstream in upstreams]
        duplicates = sorted({path for path in paths if paths.count(path) > 1})
        if duplicates:
            raise ValueError(f"path {duplicates[0]!r} is used by more than one upstream")
        return upstreams


# --- the environment -----------------------------------------------------------------------------------

Loc = tuple[str | int, ...]


@dataclass
class Environment:
    """What the `AUTHPROXY_*` variables say, as `read_environment()` found it."""

    # Nested like the TOML file, to be merged over it key by key.
    values: dict[str, Any] = dataclass_field(default_factory=dict)
    # The variable each key's value came from, for the `(from AUTHPROXY_...)` of its errors.
    origins: dict[Loc, str] = dataclass_field(default_factory=dict)
    # Variables that could not be read at all (bad JSON, ...): the key, and its one-line problem.
    problems: list[tuple[Loc, str]] = dataclass_field(default_factory=list)


def read_environment(environ: Mapping[str, str]) -> Environment:
    """Read `AUTHPROXY_<SECTION>__<KEY>` (and whole `AUTHPROXY_<SECTION>` JSON) variables; pure.

    Lists take JSON or comma-separated values; a section or `AUTHPROXY_UPSTREAMS` takes JSON. Variables
    whose section does not exist belong to other tools (`AUTHPROXY_PORT`) and are ignored, as before.
    """
    env = Environment()
    # Whole sections first, so that AUTHPROXY_SERVER__WORKERS refines AUTHPROXY_SERVER='{...}'.
    for name in sorted(environ, key=lambda name: ("__" in name, name)):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        field_info = Config.model_fields.get(section)
        if field_info is None:
            continue
        raw = environ[name]
        try:
            if not key:
                _read_section_variable(env, section, field_info.annotation, name, raw)
            else:
                _read_key_variable(env, section, key, field_info.annotation, name, raw)
        except _EnvProblem as problem:
            env.problems.append((problem.loc, f"{_dotted(problem.loc)}: {problem} (from {name})"))
    return env


class _EnvProblem(ValueError):
    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc


def _read_section_variable(env: Environment, section: str, annotation: Any, name: str, raw: str) -> None:
    value = _json(raw, (section,))
    if get_origin(annotation) is list:  # upstreams: the whole list, as JSON
        env.values[section] = value
        env.origins[(section,)] = name
        return
    if not isinstance(value, dict):
        raise _EnvProblem((section,), f"must be a JSON object of [{section}] keys")
    env.values.setdefault(section, {}).update(value)
    env.origins.update({(section, str(key)): name for key in value})


def _read_key_variable(
    env: Environment, section: str, key: str, annotation: Any, name: str, raw: str
) -> None:
    if get_origin(annotation) is list:
        raise _EnvProblem(
            (section,),
            f"cannot be set key by key; put the whole list in {ENV_PREFIX}{section.upper()} as JSON",
        )
    if "__" in key:
        raise _EnvProblem((section, *key.split("__")), "unknown key")
    fields: dict[str, FieldInfo] = annotation.model_fields
    target = fields.get(key)
    # An unknown key goes through as it is, for the model's own "unknown key; did you mean" error.
    value = raw if target is None else _parse_value(target.annotation, raw, (section, key))
    env.values.setdefault(section, {})[key] = value
    env.origins[(section, key)] = name


def _parse_value(annotation: Any, raw: str, loc: Loc) -> Any:
    """A variable's text as the value the model expects: lists from JSON or commas, None for empty."""
    if get_origin(annotation) is list:
        text = raw.strip()
        if text.startswith("["):
            return _json(text, loc)
        if not text:
            return []
        if get_args(annotation)[0] == RouteRule:
            # A regular expression may itself contain commas ({1,3}): splitting could change its meaning.
            if "," in text:
                raise _EnvProblem(loc, 'a regex may contain ",": write the list as JSON, e.g. ["^/a/"]')
            return [text]
        return [item.strip() for item in text.split(",") if item.strip()]
    if get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation) and not raw:
        return None
    return raw


def _json(raw: str, loc: Loc) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        # exc.msg and the position only: the text itself may hold a secret.
        raise _EnvProblem(loc, f"not valid JSON: {exc.msg} (character {exc.pos + 1})") from None


class _EnvironmentSource(PydanticBaseSettingsSource):
    """The environment as `read_environment()` reads it; variables it cannot read are left out here,
    and `load()` reports them."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return read_environment(os.environ).values


# --- loading and error reporting -----------------------------------------------------------------------


def load(path: str | Path) -> Config:
    """Read, merge and validate the configuration; raise ConfigError with every problem found."""
    data = _read_toml(Path(path))
    if isinstance(data.get("routes"), list):
        # The `[[routes]]` shape as the table it is stored in, so that an AUTHPROXY_ROUTES__* variable
        # merges into it instead of replacing the whole list.
        data["routes"] = {"table": data["routes"]}
    environment = read_environment(os.environ)
    unreadable = [loc for loc, _ in environment.problems]
    problems = [problem for _, problem in environment.problems]
    try:
        config = Config(**data)
    except ValidationError as exc:
        for error in exc.errors():
            loc, text = _locate(error)
            # An error about a key whose variable could not be read is about the file's value or a
            # "missing" that the variable was meant to fill: the variable's own problem says it all.
            if not any(loc[: len(bad)] == bad for bad in unreadable):
                problems.append(_with_origin(loc, text, environment.origins))
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([f"config: file {str(path)!r} does not exist"]) from None
    except OSError as exc:
        raise ConfigError([f"config: cannot read {str(path)!r}: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"config: {path} is not valid TOML: {exc}"]) from None


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _locate(error: Any) -> tuple[Loc, str]:
    """The key an error concerns and its message, never echoing the offending value (it may be a secret)."""
    loc: Loc = tuple(part for part in error["loc"] if not str(part).startswith("function-"))
    if loc[:2] == ("routes", "table"):
        loc = ("routes", *loc[2:])  # as the file spells it: routes[0].path
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return loc, f"unknown key{_suggestion(loc)}"
    if error["type"] == "missing":
        return loc, "missing (required)"
    # Validators that concern a specific field of the section name it as `field: message`.
    field, sep, rest = message.partition(": ")
    if sep and re.fullmatch(r"[a-z_]+", field):
        return (*loc, field), rest
    return loc, message


def _with_origin(loc: Loc, text: str, origins: Mapping[Loc, str]) -> str:
    """One line, `key: message`, and the variable the key's value came from, if any."""
    line = f"{_dotted(loc)}: {text}" if loc else text
    for length in range(len(loc), 0, -1):
        if loc[:length] in origins:
            return f"{line} (from {origins[loc[:length]]})"
    return line


def _suggestion(loc: tuple[str | int, ...]) -> str:
    model: Any = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return ""
        annotation = field.annotation
        model = getattr(annotation, "__args__", (annotation,))[0]
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""

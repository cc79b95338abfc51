"""Typed configuration: the TOML file, `AUTHPROXY_<SECTION>__<KEY>` overrides and `*_file` secrets.

`load(path)` is the only entry point. Every problem is reported as one line that starts with the dotted
key it concerns (`session.cookie_secrets: ...`), collected in a `ConfigError`; secrets are `SecretStr`
and never appear in a message.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
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
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from authproxy.errors import ConfigError
from authproxy.paths import parse_route_rule
from authproxy.redirect import RedirectPolicy

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


HostPort = Annotated[str, AfterValidator(_listen)]
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


def _read_secret_file(path: Path, key: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"{key}: cannot read {str(path)!r}: {exc.strerror}") from None


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

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("missing; set it to your CentralAuth organization ID")
        return value.strip()

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
        for index, secret in enumerate(secrets):
            if len(secret.get_secret_value()) < MIN_COOKIE_SECRET_LENGTH:
                raise ValueError(
                    f"cookie_secrets: secret #{index + 1} is shorter than {MIN_COOKIE_SECRET_LENGTH} "
                    "characters (`authproxy gen-secret` makes one)"
                )
        if self.cookie_samesite == "none" and not self.cookie_secure:
            raise ValueError("cookie_samesite: 'none' requires cookie_secure = true (browsers drop it)")
        object.__setattr__(self, "cookie_secrets", secrets)
        return self


class UpstreamConfig(Section):
    path: AbsPath = "/"
    url: HttpUrl
    preserve_host: bool = False
    timeout: Seconds = 60


class RoutesConfig(Section):
    skip_auth: list[RouteRule] = []
    api: list[RouteRule] = []
    # Send each segment's `;parameters` (`;jsessionid=...`) upstream; the rules still judge without them.
    keep_path_parameters: bool = False


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


class HeadersConfig(Section):
    profile: Literal["oauth2-proxy"] = "oauth2-proxy"
    pass_access_token: bool = False
    strip_extra: list[HeaderName] = []


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
    routes: RoutesConfig = RoutesConfig()
    authorization: AuthorizationConfig = AuthorizationConfig()
    redirects: RedirectsConfig = RedirectsConfig()
    headers: HeadersConfig = HeadersConfig()
    logging: LoggingConfig = LoggingConfig()
    branding: BrandingConfig = BrandingConfig()

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
        return env_settings, init_settings

    @field_validator("upstreams")
    @classmethod
    def _unique_paths(cls, upstreams: list[UpstreamConfig]) -> list[UpstreamConfig]:
        paths = [upstream.path for upstream in upstreams]
        duplicates = sorted({path for path in paths if paths.count(path) > 1})
        if duplicates:
            raise ValueError(f"path {duplicates[0]!r} is used by more than one upstream")
        return upstreams


# --- loading and error reporting -----------------------------------------------------------------------


def load(path: str | Path) -> Config:
    """Read, merge and validate the configuration; raise ConfigError with every problem found."""
    data = _read_toml(Path(path))
    try:
        return Config(**data)
    except ValidationError as exc:
        raise ConfigError([_describe(error) for error in exc.errors()]) from None


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


def _describe(error: Any) -> str:
    """One line, `key: message`, never echoing the offending value (it may be a secret)."""
    loc = tuple(part for part in error["loc"] if not str(part).startswith("function-"))
    message = str(error["msg"]).removeprefix("Value error, ")
    key = _dotted(loc)
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key{_suggestion(loc)}"
    if error["type"] == "missing":
        return f"{key}: missing (required)"
    # Validators that concern a specific field of the section name it as `field: message`.
    field, sep, rest = message.partition(": ")
    if sep and re.fullmatch(r"[a-z_]+", field):
        return f"{key}.{field}: {rest}" if key else f"{field}: {rest}"
    return f"{key}: {message}" if key else message


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

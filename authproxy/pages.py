"""What the proxy itself says to people and programs: small HTML pages and JSON errors.

Every page is self-contained (inline CSS, no external assets unless the operator configures a logo),
readable on a phone, escapes everything it shows, and carries the `X-Authproxy: 1` marker and the
request id so an operator can tell a proxy answer from the app's. Nothing attacker-controlled (such as
CentralAuth's `error_description`) is ever reflected.

Every answer the proxy makes itself also carries the headers of `own_headers` (pages set them here,
`authproxy.answers` adds them to every other answer on the way out): it may not be framed, sniffed or
leak its URL as a referrer, and it names no software versions. A page may load nothing but its own
inline style and the configured logo; the policy allows the style by its hash rather than
`'unsafe-inline'`, so even markup injected into a page could neither style nor script it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

from aiohttp import web

MARKER = {"X-Authproxy": "1", "Cache-Control": "no-store"}
# What the `Server` header says on the proxy's own answers: a name, no versions to look vulnerabilities up by.
SERVER = "authproxy"
# For answers that are not pages (JSON, redirects, plain text): nothing may load, submit or frame them.
STRICT_POLICY = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
# A logo URL whose origin can be written as a CSP source expression (which has no IPv6 literals,
# userinfo or escapes); any other logo URL is allowed by its scheme alone.
_ORIGIN = re.compile(r"(https?)://([a-z0-9.-]+(?::[0-9]{1,5})?)(?:[/?#].*)?", re.ASCII | re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Branding:
    """`[branding]`: the product name shown above every page, an optional logo and footer line."""

    title: str = ""
    logo_url: str = ""
    footer: str = ""


DEFAULT_BRANDING = Branding()

_STYLE = (
    ":root{color-scheme:light dark}"
    "body{font:16px/1.55 system-ui,-apple-system,'Segoe UI',sans-serif;background:#f4f5f7;color:#1d2430;"
    "margin:0;display:flex;min-height:100vh;align-items:center;justify-content:center}"
    "main{background:#fff;max-width:28rem;width:calc(100% - 2rem);box-sizing:border-box;padding:2rem;"
    "margin:1rem 0;border-radius:14px;box-shadow:0 2px 14px rgba(0,0,0,.08);overflow-wrap:anywhere}"
    "header{display:flex;align-items:center;gap:.6rem;color:#5b6474;font-size:.9rem;margin-bottom:1.2rem}"
    "header img{max-height:2rem;max-width:8rem}"
    "h1{font-size:1.35rem;margin:0 0 .75rem}p{margin:.5rem 0 1rem}.note{color:#5b6474;font-size:.95rem}"
    "a.button,button{display:inline-block;background:#2457d6;color:#fff;border:0;border-radius:8px;"
    "padding:.65rem 1.3rem;font:inherit;text-decoration:none;cursor:pointer;min-height:44px;"
    "box-sizing:border-box;text-align:center}a.button:hover,button:hover{background:#1b45ad}"
    # Two actions side by side get equal widths, and stack (full width) when the screen is too narrow.
    ".actions{display:flex;flex-wrap:wrap;gap:.75rem;margin:1.5rem 0 .5rem}"
    ".actions>*{flex:1 1 9rem;margin:0}"
    "a.button.secondary{background:transparent;color:#2457d6;box-shadow:inset 0 0 0 1.5px #2457d6}"
    "a.button.secondary:hover{background:#eef2fd}"
    "small{color:#6b7280;display:block;margin-top:1.5rem;word-break:break-all}"
    "footer{color:#6b7280;font-size:.85rem;margin-top:1rem;border-top:1px solid #e5e7eb;padding-top:.8rem}"
    "@media (prefers-color-scheme:dark){body{background:#111418;color:#e6e8eb}"
    "main{background:#1b1f24;box-shadow:none}footer{border-color:#2c3138}.note{color:#a3aab5}"
    "a.button.secondary{color:#9db8ff;box-shadow:inset 0 0 0 1.5px #9db8ff}"
    "a.button.secondary:hover{background:#242b36}}"
)


_STYLE_SOURCE = f"'sha256-{base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()}'"


def own_headers(policy: str = STRICT_POLICY) -> Mapping[str, str]:
    """The headers every answer made by the proxy itself carries; pages pass `page_policy`'s policy."""
    return {
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": policy,
        # A page URL can carry a login's code and state; the start route sets its own policy, so that
        # CentralAuth still sees the proxy's origin there.
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }


@functools.lru_cache(maxsize=16)
def page_policy(logo_url: str, *, form: bool = False) -> str:
    """The Content-Security-Policy of an HTML page: its inline style and the logo, nothing else.

    A page without a form may not submit one anywhere. The one page with a form, the sign-out
    confirmation, gets no `form-action`: its POST is answered with a redirect to the return URL, which
    leads on to the application (and from there possibly to the sign-in at CentralAuth or wherever the
    application redirects), and browsers hold every step of that chain to `form-action`.
    """
    directives = ["default-src 'none'", f"style-src {_STYLE_SOURCE}"]
    image = _image_source(logo_url)
    if image:
        directives.append(f"img-src {image}")
    if not form:
        directives.append("form-action 'none'")
    directives += ["base-uri 'none'", "frame-ancestors 'none'"]
    return "; ".join(directives)


def _image_source(logo_url: str) -> str | None:
    """Where the configured logo may come from: data:, this site, or the logo URL's origin."""
    if not logo_url:
        return None
    if logo_url.startswith("data:"):
        return "data:"
    if logo_url.startswith("/"):
        return "'self'"
    match = _ORIGIN.fullmatch(logo_url)
    if match is None:
        return logo_url.partition(":")[0].lower() + ":"
    return f"{match[1]}://{match[2]}".lower()


def html_page(
    title: str,
    body_html: str,
    *,
    status: int = 200,
    request_id: str = "",
    branding: Branding = DEFAULT_BRANDING,
) -> web.Response:
    """A complete page; `body_html` must already be escaped by the caller."""
    logo = f'<img src="{escape(branding.logo_url)}" alt="">' if branding.logo_url else ""
    name = f"<span>{escape(branding.title)}</span>" if branding.title else ""
    header = f"<header>{logo}{name}</header>" if logo or name else ""
    footer = f"<footer>{escape(branding.footer)}</footer>" if branding.footer else ""
    reference = f"<small>Reference: {escape(request_id)}</small>" if request_id else ""
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}{' · ' + escape(branding.title) if branding.title else ''}</title>"
        f"<style>{_STYLE}</style></head>"
        f"<body><main>{header}<h1>{escape(title)}</h1>{body_html}{reference}{footer}</main></body></html>"
    )
    # The body is the caller's own markup (escaped), so a "<form" in it is a form the page really has.
    policy = page_policy(branding.logo_url, form="<form" in body_html)
    headers = {**MARKER, **own_headers(policy)}
    return web.Response(
        text=document, status=status, content_type="text/html", charset="utf-8", headers=headers
    )


def json_error(status: int, code: str, message: str, request_id: str) -> web.Response:
    body = json.dumps({"error": code, "message": message, "request_id": request_id})
    return web.Response(text=body, status=status, content_type="application/json", headers=MARKER)


# The page itself sends no referrer; the way into the sign-in sends its origin, which the start route
# passes on to CentralAuth (its checkReferrer) as it did before pages had a policy of their own.
_TO_SIGN_IN = 'referrerpolicy="origin"'


@dataclass(frozen=True, slots=True)
class Action:
    """A button-styled link on a page; `to_sign_in` for links into the start route (see `_TO_SIGN_IN`)."""

    href: str
    label: str
    secondary: bool = False
    to_sign_in: bool = False


def action_links(actions: Sequence[Action]) -> str:
    """The row of buttons under a page's text: equal widths, stacked on a narrow screen."""
    if not actions:
        return ""
    links = "".join(
        f'<a class="button{" secondary" if action.secondary else ""}" href="{escape(action.href)}"'
        f"{' ' + _TO_SIGN_IN if action.to_sign_in else ''}>{escape(action.label)}</a>"
        for action in actions
    )
    return f'<div class="actions">{links}</div>'


def error_page(
    status: int,
    title: str,
    message: str,
    request_id: str,
    retry_url: str | None = None,
    branding: Branding = DEFAULT_BRANDING,
    *,
    note: str = "",
    actions: Sequence[Action] = (),
) -> web.Response:
    """An error: `message` says what happened, `note` what it means for the user; both plain text.

    `retry_url` is the usual single "Sign in again" button; `actions` replace it when given.
    """
    if not actions and retry_url:
        actions = (Action(retry_url, "Sign in again", to_sign_in=True),)
    body = f"<p>{escape(message)}</p>"
    if note:
        body += f'<p class="note">{escape(note)}</p>'
    return html_page(
        title, body + action_links(actions), status=status, request_id=request_id, branding=branding
    )


def sign_in_page(start_url: str, request_id: str, branding: Branding = DEFAULT_BRANDING) -> web.Response:
    body = "<p>This application needs you to sign in with CentralAuth.</p>" + action_links(
        (Action(start_url, "Sign in", to_sign_in=True),)
    )
    return html_page("Sign in", body, request_id=request_id, branding=branding)


def signed_out_page(
    start_url: str, request_id: str, *, session_wide: bool, branding: Branding = DEFAULT_BRANDING
) -> web.Response:
    """Where a sign-out without a return URL ends: a plain statement, and the way back in."""
    if session_wide:
        scope = (
            "Your CentralAuth session has ended too, so every application that signs you in with "
            "CentralAuth will ask you to sign in again."
        )
    else:
        scope = (
            "Only this application signed you out: your CentralAuth session goes on, so other "
            "applications that use CentralAuth may still be signed in."
        )
    body = (
        "<p>You have signed out of this application.</p>"
        f'<p class="note">{escape(scope)}</p>'
        + action_links((Action(start_url, "Sign in again", to_sign_in=True),))
    )
    return html_page("You are signed out", body, request_id=request_id, branding=branding)


def wants_json(accept: str, requested_with: str, api_route: bool) -> bool:
    """Programs get JSON and a 401; browsers get pages and redirects (oauth2-proxy's rule of thumb)."""
    if api_route or requested_with:
        return True
    return "text/html" not in accept.lower()

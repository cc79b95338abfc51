"""What the proxy itself says to people and programs: small HTML pages and JSON errors.

Every page is self-contained (inline CSS, no external assets unless the operator configures a logo),
readable on a phone, escapes everything it shows, and carries the `X-Authproxy: 1` marker and the
request id so an operator can tell a proxy answer from the app's. Nothing attacker-controlled (such as
CentralAuth's `error_description`) is ever reflected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape

from aiohttp import web

MARKER = {"X-Authproxy": "1", "Cache-Control": "no-store"}


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
    "border-radius:14px;box-shadow:0 2px 14px rgba(0,0,0,.08)}"
    "header{display:flex;align-items:center;gap:.6rem;color:#5b6474;font-size:.9rem;margin-bottom:1.2rem}"
    "header img{max-height:2rem;max-width:8rem}"
    "h1{font-size:1.35rem;margin:0 0 .75rem}p{margin:.5rem 0 1rem}"
    "a.button,button{display:inline-block;background:#2457d6;color:#fff;border:0;border-radius:8px;"
    "padding:.65rem 1.3rem;font:inherit;text-decoration:none;cursor:pointer;min-height:44px;"
    "box-sizing:border-box}a.button:hover,button:hover{background:#1b45ad}"
    "small{color:#6b7280;display:block;margin-top:1.5rem;word-break:break-all}"
    "footer{color:#6b7280;font-size:.85rem;margin-top:1rem;border-top:1px solid #e5e7eb;padding-top:.8rem}"
    "@media (prefers-color-scheme:dark){body{background:#111418;color:#e6e8eb}"
    "main{background:#1b1f24;box-shadow:none}footer{border-color:#2c3138}}"
)


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
    return web.Response(
        text=document, status=status, content_type="text/html", charset="utf-8", headers=MARKER
    )


def json_error(status: int, code: str, message: str, request_id: str) -> web.Response:
    body = json.dumps({"error": code, "message": message, "request_id": request_id})
    return web.Response(text=body, status=status, content_type="application/json", headers=MARKER)


def error_page(
    status: int,
    title: str,
    message: str,
    request_id: str,
    retry_url: str | None = None,
    branding: Branding = DEFAULT_BRANDING,
) -> web.Response:
    action = f'<p><a class="button" href="{escape(retry_url)}">Sign in again</a></p>' if retry_url else ""
    return html_page(
        title, f"<p>{escape(message)}</p>{action}", status=status, request_id=request_id, branding=branding
    )


def sign_in_page(start_url: str, request_id: str, branding: Branding = DEFAULT_BRANDING) -> web.Response:
    body = (
        "<p>This application needs you to sign in with CentralAuth.</p>"
        f'<p><a class="button" href="{escape(start_url)}">Sign in</a></p>'
    )
    return html_page("Sign in", body, request_id=request_id, branding=branding)


def wants_json(accept: str, requested_with: str, api_route: bool) -> bool:
    """Programs get JSON and a 401; browsers get pages and redirects (oauth2-proxy's rule of thumb)."""
    if api_route or requested_with:
        return True
    return "text/html" not in accept.lower()

"""The fake's HTML: the login form, the error page and the autologin hand-off page.

Small, self-contained pages (no external assets). Every value that came from a request is
HTML-escaped, because `error_description`, `email` and the translations are attacker-controllable.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from aiohttp import web

from .loginquery import LoginQuery

_STYLE = (
    "body{font-family:system-ui,sans-serif;background:var(--bg,#f4f5f7);color:#1d2330;margin:0;"
    "padding:1rem}"
    # The card keeps a margin on a phone (the body's padding) and never grows wider than the screen.
    "main{max-width:26rem;margin:3rem auto;background:#fff;padding:2rem;border-radius:.5rem;"
    "box-shadow:0 1px 4px #0002;box-sizing:border-box;overflow-wrap:anywhere}"
    "@media (max-width:30rem){main{margin:1rem auto;padding:1.5rem 1.25rem}}"
    "h1{font-size:1.3rem;margin-top:0}label{display:block;margin:.5rem 0 .25rem}"
    "input{width:100%;box-sizing:border-box;padding:.6rem;font-size:1rem}"
    "button{margin-top:1rem;padding:.6rem 1rem;font-size:1rem;background:var(--primary,#2856d8);"
    "color:#fff;border:0;border-radius:.25rem;min-height:44px;width:100%}"
    ".error{color:#a3141a}code{background:#eee;padding:0 .2rem}"
    ".fake{background:#fff4d6;border:1px solid #e8c55a;color:#5c4400;border-radius:.25rem;"
    "padding:.5rem .75rem;font-size:.9rem;margin:0 0 1rem}"
)
# Posts the page height to the embedding window, as CentralAuth's embedded login does, so the embedding
# page can size its iframe.
_EMBED_SCRIPT = (
    "<script>function h(){parent.postMessage(document.documentElement.scrollHeight,'*')}"
    "addEventListener('load',h);addEventListener('resize',h)</script>"
)
_PAGE_HEADERS = {"Cache-Control": "no-store"}


def _page(title: str, body: str, *, style_vars: str = "", extra_head: str = "") -> str:
    style = f' style="{escape(style_vars)}"' if style_vars else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_STYLE}</style>'
        f"{extra_head}</head><body{style}><main>{body}</main></body></html>"
    )


def html_response(text: str, status: int = 200, *, frameable: bool = False) -> web.Response:
    headers = dict(_PAGE_HEADERS)
    if not frameable:
        headers["X-Frame-Options"] = "DENY"
    return web.Response(text=text, status=status, content_type="text/html", headers=headers)


def login_form(
    query: LoginQuery, action: str, *, error: str = "", email: str | None = None, open_sign_up: bool = True
) -> str:
    """The e-mail form. `action` is the current `/login?...` URL, so the POST carries the same query.

    It says plainly that it is the fake, so nobody takes it for the real CentralAuth or types a
    password, and (with `open_sign_up`, the fake's `enableUserCreation`) that any e-mail address works.
    """
    texts = query.translations
    if query.affirm:
        title = "Confirm it's you"
        intro = texts.get("loginPageAffirmIntro", "Sign in again to affirm your existing session.")
    else:
        title = "Sign in"
        intro = texts.get("loginPageIntro", "Enter your e-mail address to sign in.")
    notices = "".join(
        f'<p class="error" role="alert">{escape(text)}</p>' for text in (query.message, error) if text
    )
    style_vars = ";".join(
        f"--{name}:{value}"
        for name, value in (
            ("primary", query.colors.get("primaryColor")),
            ("bg", query.colors.get("backgroundColor")),
        )
        if value
    )
    anyone = " Any e-mail address signs in; there is no password." if open_sign_up else ""
    fake = f'<p class="fake" id="fake-notice">A fake CentralAuth for development and tests.{anyone}</p>'
    body = (
        f"<h1>{escape(title)}</h1>{fake}{notices}<p>{escape(intro)}</p>"
        f'<form method="post" action="{escape(action)}">'
        f'<label for="email">E-mail</label>'
        f'<input id="email" name="email" type="email" required autofocus '
        f'value="{escape(email or query.email)}">'
        f'<button type="submit">{"Affirm" if query.affirm else "Continue"}</button></form>'
    )
    return _page(title, body, style_vars=style_vars, extra_head=_EMBED_SCRIPT if query.embed else "")


def error_page(code: str, message: str) -> str:
    body = f'<h1>Sign-in error</h1><p class="error"><code>{escape(code)}</code></p><p>{escape(message)}</p>'
    return _page("Sign-in error", body)


def autologin_page(primary_url: str, delivery_urls: Sequence[str]) -> str:
    """Loads each other domain's callback in a hidden iframe, then continues to the primary callback.

    The script waits for every frame (or 3 s) before leaving, so the frames are not cancelled; the
    meta refresh is the fallback without JavaScript.
    """
    frames = "".join(
        f'<iframe class="autologin" src="{escape(url)}" hidden width="0" height="0"></iframe>'
        for url in delivery_urls
    )
    target = escape(primary_url)
    script = (
        "<script>(function(){var f=document.querySelectorAll('iframe.autologin'),n=f.length,"
        "go=function(){location.replace(document.getElementById('next').href)};"
        "f.forEach(function(x){x.addEventListener('load',function(){if(--n<=0)go()})});"
        "setTimeout(go,3000)})()</script>"
    )
    body = f'<h1>Signing you in…</h1><p><a id="next" href="{target}">Continue</a></p>{frames}{script}'
    head = f'<meta http-equiv="refresh" content="5;url={target}">'
    return _page("Signing you in", body, extra_head=head)

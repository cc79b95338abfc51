"""Who the user is: the e-mail address authproxy puts in `X-Forwarded-Email`."""

from __future__ import annotations

from django.contrib.auth.middleware import RemoteUserMiddleware


class ForwardedEmailMiddleware(RemoteUserMiddleware):
    """Django's documented way to trust a header set by a front-end proxy (WSGI spells it HTTP_...)."""

    header = "HTTP_X_FORWARDED_EMAIL"

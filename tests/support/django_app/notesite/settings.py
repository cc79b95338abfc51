"""Settings of the test site: as close to a fresh `startproject` as the proxy setup allows.

The only departures that the proxy needs are the header middleware and the remote-user backend. The
SQLite file comes from `NOTESITE_DATABASE` so each test run keeps its database in its own tmp directory.
"""

from __future__ import annotations

import os
from pathlib import Path

# A fixed key is fine: the site only ever runs on loopback inside a test.
SECRET_KEY = "notesite-test-only-not-a-secret-0123456789abcdefghijklmnopqrstuvwxyz"
# DEBUG off, as in production: Django's error pages and ALLOWED_HOSTS checks behave as they would there.
DEBUG = False
# The port is not part of the match: Django strips it from Host before comparing.
ALLOWED_HOSTS = ["127.0.0.1"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "notesite",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "notesite.middleware.ForwardedEmailMiddleware",
]

# Users are whoever the proxy says they are; the backend creates them on first sight.
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.RemoteUserBackend"]

ROOT_URLCONF = "notesite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": Path(os.environ["NOTESITE_DATABASE"]),
    }
}

USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# With DEBUG off Django tells nobody why it refused a POST; the test reads the reason from stderr.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django.security.csrf": {"handlers": ["stderr"], "level": "WARNING"}},
}

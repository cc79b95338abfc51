# syntax=docker/dockerfile:1
#
# authproxy container image.
#
#   docker build -t authproxy:0.1.0 .
#   docker run --rm -p 4180:4180 --read-only --tmpfs /tmp \
#     -v "$PWD/config.toml:/etc/authproxy/config.toml:ro" authproxy:0.1.0
#
# The image holds no configuration and no secrets. Mount the TOML file at /etc/authproxy/config.toml (or
# pass another path: `... authproxy:0.1.0 serve -c /path`), and give secrets as files
# (`client_secret_file`, `cookie_secret_file`) or as AUTHPROXY_<SECTION>__<KEY> environment variables.
# deploy/compose, deploy/kubernetes and deploy/helm show both ways.

ARG PYTHON_IMAGE=python:3.12-slim

# --- build: the project and every dependency as wheels ----------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# Only what the wheel is built from; .dockerignore keeps everything else out of the build context.
COPY pyproject.toml README.md ./
COPY authproxy ./authproxy
# Wheels for the dependencies too, so the runtime stage installs offline from exactly this set. All of
# them ship binary wheels for linux, so neither stage needs a compiler.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime ----------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# PYTHONDONTWRITEBYTECODE: the root filesystem may be read-only, and pip already compiled the installed
# modules at build time. PYTHONUNBUFFERED: log lines reach `docker logs` / `kubectl logs` at once.
# HEALTHCHECK_URL: where the HEALTHCHECK below looks; change it together with `server.listen`.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HEALTHCHECK_URL=http://127.0.0.1:4180/ping

# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 authproxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin authproxy

# The wheels are bind-mounted from the build stage rather than copied, so they never land in a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/authproxy-*.whl \
    && authproxy --version

# Where the config file is expected; an empty directory owned by root, so the process cannot change it.
RUN mkdir -p /etc/authproxy

USER 10001:10001
WORKDIR /tmp

# 4180: the proxy (`server.listen`). 9100: Prometheus metrics, when `server.metrics_listen` is set.
EXPOSE 4180 9100

# /ping is liveness only (no I/O). The image has no curl, so the standard library asks; any error or
# non-2xx answer makes urlopen raise, which exits non-zero.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"]

# SIGTERM (the default) starts a graceful stop: no new connections, requests in flight get
# `server.shutdown_grace` seconds (25 by default). Give the container longer than that to stop:
# `docker stop -t 35`, compose `stop_grace_period`, Kubernetes `terminationGracePeriodSeconds`.
STOPSIGNAL SIGTERM

ENTRYPOINT ["authproxy"]
CMD ["serve", "-c", "/etc/authproxy/config.toml"]

"""nginx in the benchmark, twice: the static upstream every proxy forwards to, and the reference proxy.

Both run Debian's nginx in the foreground with a private prefix directory (pid, logs, temp files), so
the system service and /etc/nginx stay untouched. The upstream serves files from the data directory
(`/1k`, `/1m`, a sparse `/1g`) with one worker: it is the cheapest HTTP server on the machine, which
leaves the most CPU to the proxies being compared. The reference proxy forwards to the same upstream
with upstream keep-alive and without buffering (streaming, as the Python proxies do); it shows what
this machine can do when the proxy itself costs almost nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

_MAIN = """\
daemon off;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type application/octet-stream;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
{body}
}}
"""

_UPSTREAM = """\
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {data};
        location / {{ }}
    }}
"""

_REFERENCE = """\
    upstream app {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
"""


def upstream_config(directory: Path, port: int, data: Path) -> Path:
    body = _UPSTREAM.format(port=port, data=data)
    return _write(directory, 1, body)


def reference_config(directory: Path, port: int, upstream_port: int, workers: int) -> Path:
    body = _REFERENCE.format(port=port, upstream_port=upstream_port)
    return _write(directory, workers, body)


def command(config: Path) -> list[str]:
    return [NGINX, "-c", str(config), "-p", str(config.parent)]


def _write(directory: Path, workers: int, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "nginx.conf"
    path.write_text(_MAIN.format(workers=workers, dir=directory, body=body))
    return path

"""The upstream's content, and a small aiohttp server: a sink for uploads, and aiohttp alone.

`prepare_data()` writes the files nginx serves: `/1k` and `/1m` of random bytes, and `/1g`, a sparse
GiB that costs no disk. The sink reads a request body to its end and answers with its length; it
exists so a GiB upload through the proxy meets a reader at the other end, at full speed. Its `GET /1k`
answers 1 KiB from memory: aiohttp's own latency as a server, with no proxying at all, which is the
floor under any aiohttp proxy's.

    python -m bench.upstream --listen 127.0.0.1:8002
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from aiohttp import web

from bench import aio

KIB, MIB, GIB = 1024, 1024**2, 1024**3
FILES = {"1k": KIB, "1m": MIB}


def prepare_data(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, size in FILES.items():
        (directory / name).write_bytes(os.urandom(size))
    with (directory / "1g").open("wb") as sparse:
        sparse.truncate(GIB)
    # nginx's workers run as an unprivileged user when started as root: let them read the files.
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)
    return directory


async def sink(request: web.Request) -> web.Response:
    received = 0
    while chunk := await request.content.readany():
        received += len(chunk)
    return web.json_response({"received": received})


KIB_BODY = os.urandom(KIB)


async def kib(request: web.Request) -> web.Response:
    return web.Response(body=KIB_BODY, content_type="application/octet-stream")


async def traces(request: web.Request) -> web.Response:
    """An OTLP/HTTP collector that keeps nothing: the traced authproxy's spans end here."""
    await request.read()
    # An empty body is an empty ExportTraceServiceResponse: every span accepted.
    return web.Response(body=b"", content_type="application/x-protobuf")


async def serve(host: str, port: int) -> None:
    app = web.Application(client_max_size=0)
    app.router.add_get("/1k", kib)
    app.router.add_post("/v1/traces", traces)
    app.router.add_route("*", "/{tail:.*}", sink)
    await aio.serve(app, "sink", host, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    aio.run(serve(host, int(port)))


if __name__ == "__main__":
    main()

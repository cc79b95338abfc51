"""Every server of a run, built and started together: the upstream, the fakes, and the proxies compared.

| name | what |
| --- | --- |
| nginx-upstream | nginx serving /1k, /1m, /1g (one worker) |
| sink | Python sink for uploads (authproxy routes /upload to it) |
| devidp | the fake CentralAuth, hijack protection off, every login approved |
| stubidp | an any-token userinfo, for the 100,000-session memory measurement |
| nginx-Nw | nginx proxying to the upstream: the machine's reference |
| bare-Nw | the bare aiohttp pass-through (bench/bare.py) |
| authproxy-Nw | authproxy, session_check_ttl 30: every measured request a cache hit |
| authproxy-cold-1w | authproxy, session_check_ttl 0: every request a userinfo call |
| authproxy-ttl-Nw | authproxy with a short TTL, trusting X-Forwarded-For from loopback (steady state) |
| authproxy-mem-1w | authproxy against stubidp, for the memory measurement |
| authproxy-baseline-1w | with `--baseline DIR`: authproxy from another source tree (an older commit) |
| authproxy-tracing-1w | with `--tracing`: authproxy-1w with `[tracing]` on, exporting to the sink |
| oidc-provider | the minimal OpenID Connect provider Apache signs in at (bench/oidc_provider.py) |
| apache-cookie | Apache + mod_auth_openidc, client-cookie sessions (bench/apache.py; full and quick) |
| apache-shm | Apache + mod_auth_openidc, server-cache sessions in shared memory |

All authproxy instances share one `public_url` (the first one's), cookie secret and client, so one
real login is good on every instance.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench import apache, servers, sessions
from bench.plan import Plan
from bench.servers import Server
from bench.upstream import prepare_data


@dataclass
class Stack:
    identity: sessions.Identity
    all: dict[str, Server] = field(default_factory=dict)
    mem_metrics_url: str = ""

    def __getitem__(self, name: str) -> Server:
        return self.all[name]

    def __contains__(self, name: str) -> bool:
        return name in self.all

    def start(self) -> None:
        servers.start_all(list(self.all.values()))

    def stop(self) -> None:
        servers.stop_all(list(self.all.values()))


def build(plan: Plan, work: Path, baseline: Path | None = None, tracing: bool = False) -> Stack:
    data = prepare_data(work / "data")
    first_port = servers.free_port()
    stack = Stack(sessions.Identity(public_url=f"http://127.0.0.1:{first_port}"))
    worker_counts = (1, 2) if plan.two_workers else (1,)

    def add(server: Server) -> Server:
        stack.all[server.name] = server
        return server

    upstream = add(servers.nginx_upstream(work, data))
    sink = add(servers.python_module("sink", "bench.upstream", work, ready="sink.ready"))
    idp = add(servers.devidp(work, stack.identity.client_id, stack.identity.client_secret, sessions.EMAIL))
    stub = add(servers.python_module("stubidp", "bench.stubidp", work, ready="stubidp.ready"))
    for workers in worker_counts:
        add(servers.nginx_reference(work, upstream.port, workers))
        add(
            servers.python_module(
                f"bare-{workers}w", "bench.bare", work, "--upstream", upstream.url,
                "--workers", str(workers), workers=workers, ready="bare.ready",
            )
        )  # fmt: skip

    def proxy(
        name: str,
        workers: int,
        ttl: float,
        *,
        port: int = 0,
        idp_url: str = idp.url,
        metrics_port: int = 0,
        trusted: tuple[str, ...] = (),
        source: Path | None = None,
        extra: str = "",
    ) -> None:
        port = port or servers.free_port()
        text = sessions.config_text(
            stack.identity,
            port=port,
            idp_url=idp_url,
            upstream_url=upstream.url,
            sink_url=sink.url,
            workers=workers,
            ttl=ttl,
            metrics_port=metrics_port,
            trusted_proxies=trusted,
        )
        add(servers.authproxy(name, work, text + extra, port, workers, source))

    for workers in worker_counts:
        proxy(f"authproxy-{workers}w", workers, 30, port=first_port if workers == 1 else 0)
        proxy(f"authproxy-ttl-{workers}w", workers, plan.steady_ttl, trusted=("127.0.0.1/32",))
    proxy("authproxy-cold-1w", 1, 0)
    if tracing:
        # sample_ratio 1: the most tracing can cost, every request's four spans built and exported.
        proxy("authproxy-tracing-1w", 1, 30, extra=f'\n[tracing]\notlp_endpoint = "{sink.url}"\n')
    if baseline is not None:
        proxy("authproxy-baseline-1w", 1, 30, source=baseline)
    if plan.apache and not apache.available():
        print(f"apache2 or {apache.OPENIDC} missing: the Apache peer is not measured", file=sys.stderr)
    elif plan.apache:
        client_id, client_secret = stack.identity.client_id, stack.identity.client_secret
        provider = add(apache.provider(work, client_id, client_secret))
        for name in apache.VARIANTS:
            add(apache.server(name, work, upstream.port, provider, client_id, client_secret))
    metrics_port = servers.free_port()
    stack.mem_metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    proxy("authproxy-mem-1w", 1, 3600, idp_url=stub.url, metrics_port=metrics_port)
    return stack

"""Real upstream servers for the differential path tests: Tomcat 10, Jetty 9, nginx and aiohttp on loopback.

Each upstream serves the same three resources and says which one a request reached, as one JSON line:

- `/public/*` -> "public", `/admin/*` -> "admin", everything else -> "default" (servlet mapping "/" in the
  containers, `location /` in nginx, a catch-all route in aiohttp);
- the JSON also carries the path as the server decoded it and the raw request URI it received, and
  `user`, the `X-Forwarded-User` header (null when absent).

Tomcat (jakarta.servlet) and Jetty (javax.servlet) run the same tiny servlet, compiled by `javac` once
per session for each API into a temp dir, from Debian's `/usr/share/tomcat10` and
`/usr/share/jetty9/start.jar`. Every server gets a private base directory (CATALINA_BASE, jetty.base,
nginx prefix) under the temp dir, so nothing under /etc or /var is read or written, and runs in its own
process group, killed at the end of the session. Start-up is awaited by polling the port; a server that
does not listen in time fails the test with the tail of its log.

These servers are hard requirements, like nginx in support/nginx.py: when one is missing the tests fail
with the apt-get command that installs it, they never skip.

`RecordingRelay` sits between the proxy and an upstream and records the head of every request the proxy
sent, which is how a test proves that a refused request reached nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
from aiohttp import web

from support.chaos import LoopbackServer
from support.nginx import main_conf, nginx_binary

START_TIMEOUT = 45.0  # JVMs on a loaded two-core CI machine: generous, but a hang still ends
STOP_TIMEOUT = 10.0
LOG_TAIL = 4000

TOMCAT_HOME = Path("/usr/share/tomcat10")
JETTY_HOME = Path("/usr/share/jetty9")
INSTALL_JAVA = "apt-get install -y tomcat10 jetty9 default-jdk-headless"
MISSING = (
    "{what} is required by tests/test_differential_paths.py and was not found ({detail}). Install it "
    f"with `{INSTALL_JAVA}` (Debian/Ubuntu). These tests never skip."
)

# One servlet class serves the three mappings; its init-param says which one it is. `service` rather
# than `doGet`, so every method answers. All non-ASCII output is \u-escaped: the body is pure ASCII
# JSON whatever the container decoded (replacement characters, control characters, quotes).
SERVLET_SOURCE = """\
package authproxytest;

import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import {api}.servlet.ServletException;
import {api}.servlet.http.HttpServlet;
import {api}.servlet.http.HttpServletRequest;
import {api}.servlet.http.HttpServletResponse;

public final class RouteServlet extends HttpServlet {{
    private static final long serialVersionUID = 1L;

    @Override
    protected void service(HttpServletRequest request, HttpServletResponse response)
            throws ServletException, IOException {{
        String line = "{{\\"servlet\\":" + quote(getInitParameter("name"))
            + ",\\"servletPath\\":" + quote(request.getServletPath())
            + ",\\"pathInfo\\":" + quote(request.getPathInfo())
            + ",\\"requestURI\\":" + quote(request.getRequestURI())
            + ",\\"user\\":" + quote(request.getHeader("X-Forwarded-User")) + "}}\\n";
        byte[] body = line.getBytes(StandardCharsets.US_ASCII);
        response.setStatus(200);
        response.setContentType("text/plain");
        response.setCharacterEncoding("US-ASCII");
        response.setContentLength(body.length);
        try (OutputStream out = response.getOutputStream()) {{
            out.write(body);
        }}
    }}

    static String quote(String value) {{
        if (value == null) {{
            return "null";
        }}
        StringBuilder out = new StringBuilder(value.length() + 2).append('"');
        for (int i = 0; i < value.length(); i++) {{
            char c = value.charAt(i);
            if (c == '"' || c == '\\\\') {{
                out.append('\\\\').append(c);
            }} else if (c < 0x20 || c > 0x7e) {{
                out.append(String.format("\\\\u%04x", (int) c));
            }} else {{
                out.append(c);
            }}
        }}
        return out.append('"').toString();
    }}
}}
"""

# metadata-complete: no annotation scanning, so the mapping below is all the routing there is.
WEB_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<web-app xmlns="{namespace}" version="{version}" metadata-complete="true">
{servlets}
</web-app>
"""
SERVLET_XML = """\
  <servlet>
    <servlet-name>{name}</servlet-name>
    <servlet-class>authproxytest.RouteServlet</servlet-class>
    <init-param><param-name>name</param-name><param-value>{name}</param-value></init-param>
  </servlet>
  <servlet-mapping><servlet-name>{name}</servlet-name><url-pattern>{pattern}</url-pattern></servlet-mapping>"""
MAPPINGS = {"public": "/public/*", "admin": "/admin/*", "default": "/"}

# Tomcat: one connector on loopback, no shutdown port, the webapp deployed once from webapps/ROOT.
TOMCAT_SERVER_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<Server port="-1" shutdown="SHUTDOWN">
  <Service name="Catalina">
    <Connector address="127.0.0.1" port="{port}" protocol="HTTP/1.1" connectionTimeout="20000"/>
    <Engine name="Catalina" defaultHost="localhost">
      <Host name="localhost" appBase="webapps" unpackWARs="false" autoDeploy="false"/>
    </Engine>
  </Service>
</Server>
"""
# Skipping the jar scan (TLDs, web-fragments) saves about a second of start-up; we use no JSP.
TOMCAT_CONTEXT_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<Context><JarScanner scanClassPath="false" scanManifest="false"/></Context>
"""
# What catalina.sh passes on Java 9+, so Tomcat does not warn about its leak-prevention reflection.
TOMCAT_OPENS = [
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.rmi/sun.rmi.transport=ALL-UNNAMED",
]
# Jetty: the http connector and the directory deployer, which deploys webapps/ROOT at "/" once
# (scanInterval=0: no rescanning). Everything else is Jetty's own default, as an operator would run it.
JETTY_START_INI = """\
--module=http,deploy
jetty.http.host=127.0.0.1
jetty.http.port={port}
jetty.deploy.scanInterval=0
"""
# Short-lived JVMs: C1 only and the serial collector start faster and are plenty for a few thousand
# requests.
JVM_FLAGS = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx256m", "-Djava.awt.headless=true"]

# nginx as an upstream: the three locations answer at once with the location's name, `$uri` (decoded and
# normalized, what nginx matched the locations against) and `$request_uri` (as received). nginx cannot
# JSON-escape in `return`, so `parse_nginx_line` reads these lines tolerantly.
NGINX_SITE = """\
map $http_x_forwarded_user $authproxy_test_user {{
    ""      "null";
    default "\\"$http_x_forwarded_user\\"";
}}

server {{
    listen 127.0.0.1:{port};
    default_type text/plain;
{locations}
}}
"""
NGINX_ANSWER = '{{"location":"{name}","uri":"$uri","request_uri":"$request_uri","user":$authproxy_test_user}}'
NGINX_LOCATION = "    location {prefix} {{\n        return 200 '" + NGINX_ANSWER + "\\n';\n    }}"
NGINX_PREFIXES = {"public": "/public/", "admin": "/admin/", "default": "/"}
NGINX_LINE = re.compile(
    r'\{"location":"(?P<location>public|admin|default)","uri":"(?P<uri>.*)",'
    r'"request_uri":"(?P<request_uri>.*)","user":(?P<user>null|"[^"]*")\}\n?',
    re.DOTALL,
)


def parse_nginx_line(body: bytes) -> dict[str, Any]:
    """One answer of the nginx upstream as a dict, even when `$uri` holds quotes, backslashes or bytes
    that are not UTF-8 (kept as surrogates, like `unquote(..., errors="surrogateescape")` does)."""
    match = NGINX_LINE.fullmatch(body.decode("utf-8", "surrogateescape"))
    if match is None:
        raise ValueError(f"not an answer of the nginx upstream: {body[:300]!r}")
    user = match["user"]
    return {
        "location": match["location"],
        "uri": match["uri"],
        "request_uri": match["request_uri"],
        "user": None if user == "null" else user[1:-1],
    }


# --- finding the installed software ----------------------------------------------------------------------


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        pytest.fail(MISSING.format(what=what, detail=f"no {path}"), pytrace=False)
    return path


def java_binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(MISSING.format(what=f"A JDK (`{name}`)", detail="not on PATH"), pytrace=False)
    return found


@dataclass(frozen=True)
class ServletApi:
    """One flavour of the servlet API: the package prefix, the jar to compile against, web.xml's schema."""

    name: str
    package: str
    jar: Path
    namespace: str
    version: str


def tomcat_api() -> ServletApi:
    # Debian links /usr/share/tomcat10/lib/servlet-api.jar to /usr/share/java/tomcat10-servlet-api.jar.
    jar = _require_file(TOMCAT_HOME / "lib" / "servlet-api.jar", "Tomcat 10")
    return ServletApi("tomcat", "jakarta", jar, "https://jakarta.ee/xml/ns/jakartaee", "6.0")


def jetty_api() -> ServletApi:
    _require_file(JETTY_HOME / "start.jar", "Jetty 9")
    # Jetty 9.4 ships servlet 3.1 as lib/servlet-api-3.1.jar (a link into /usr/share/java).
    jars = sorted((JETTY_HOME / "lib").glob("servlet-api-*.jar"))
    if not jars:
        pytest.fail(
            MISSING.format(what="Jetty 9", detail=f"no {JETTY_HOME}/lib/servlet-api-*.jar"), pytrace=False
        )
    return ServletApi("jetty", "javax", jars[0], "http://xmlns.jcp.org/xml/ns/javaee", "3.1")


# --- the webapp ------------------------------------------------------------------------------------------


def compile_servlets(apis: list[ServletApi], directory: Path) -> dict[str, Path]:
    """Compile RouteServlet for each API (in parallel: javac takes about a second each).

    Returns api name -> classes directory (to copy into WEB-INF/classes).
    """
    javac = java_binary("javac")
    running: list[tuple[ServletApi, Path, subprocess.Popen[bytes]]] = []
    for api in apis:
        source = directory / api.name / "src" / "authproxytest" / "RouteServlet.java"
        source.parent.mkdir(parents=True)
        source.write_text(SERVLET_SOURCE.format(api=api.package))
        classes = directory / api.name / "classes"
        command = [javac, "--release", "11", "-nowarn", "-cp", str(api.jar), "-d", str(classes), str(source)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        running.append((api, classes, process))
    compiled = {}
    for api, classes, process in running:
        output, _ = process.communicate(timeout=120)
        if process.returncode != 0:
            raise AssertionError(
                f"javac failed for the {api.name} webapp:\n{output.decode(errors='replace')}"
            )
        compiled[api.name] = classes
    return compiled


def write_webapp(root: Path, api: ServletApi, classes: Path) -> None:
    """An exploded webapp at `root` (the ROOT context): WEB-INF/web.xml and the compiled classes."""
    web_inf = root / "WEB-INF"
    web_inf.mkdir(parents=True)
    shutil.copytree(classes, web_inf / "classes")
    servlets = "\n".join(SERVLET_XML.format(name=name, pattern=pattern) for name, pattern in MAPPINGS.items())
    web_xml = WEB_XML.format(namespace=api.namespace, version=api.version, servlets=servlets)
    (web_inf / "web.xml").write_text(web_xml)


# --- running servers -------------------------------------------------------------------------------------


@dataclass
class Server:
    """An upstream server we started, in its own process group, listening on 127.0.0.1:`port`."""

    name: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    logs: tuple[Path, ...]  # where the server reports problems, read for failure messages

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        text = "".join(path.read_text(errors="replace") for path in self.logs if path.exists())
        return text[-LOG_TAIL:] or "(empty log)"

    def wait_until_listening(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with status {self.process.returncode} before listening on "
                    f"127.0.0.1:{self.port}; its log ends with:\n{self.log_tail()}"
                )
            with socket.socket() as sock:
                sock.settimeout(1.0)
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} did not listen on 127.0.0.1:{self.port} within {timeout:.0f} s; its log "
                    "ends with:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM to the whole process group (the JVM's threads, nginx's workers), then SIGKILL."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def _launch(
    name: str, command: list[str], directory: Path, port: int, log: IO[bytes], *more_logs: Path
) -> Server:
    # start_new_session: the server leads its own process group, so stop() reaches every process of it
    # and a Ctrl-C aimed at pytest does not kill it before the fixture's teardown can.
    process = subprocess.Popen(
        command,
        cwd=directory,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Server(name, port, directory, process, (Path(log.name), *more_logs))


def distinct_free_ports(count: int) -> list[int]:
    """Free loopback ports, all different: the servers bind theirs only once their JVM is up, so ports
    picked one by one with the socket closed in between could be handed out twice."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def launch_tomcat(classes: Path, port: int) -> Server:
    """Start Tomcat 10 with a private CATALINA_BASE; it listens about a second later."""
    _require_file(TOMCAT_HOME / "bin" / "bootstrap.jar", "Tomcat 10")
    java = java_binary("java")
    base = Path(tempfile.mkdtemp(prefix="authproxy-tomcat-"))
    for sub in ("conf", "logs", "temp", "work", "webapps"):
        (base / sub).mkdir()
    (base / "conf" / "server.xml").write_text(TOMCAT_SERVER_XML.format(port=port))
    root = base / "webapps" / "ROOT"
    write_webapp(root, tomcat_api(), classes)
    (root / "META-INF").mkdir()
    (root / "META-INF" / "context.xml").write_text(TOMCAT_CONTEXT_XML)
    bin_dir = TOMCAT_HOME / "bin"
    # Bootstrap directly rather than catalina.sh: one java process, in the foreground, no pid files.
    # Without conf/logging.properties, java.util.logging writes Tomcat's log to stderr: our log file.
    command = [
        java,
        *JVM_FLAGS,
        *TOMCAT_OPENS,
        "-cp",
        f"{bin_dir / 'bootstrap.jar'}:{bin_dir / 'tomcat-juli.jar'}",
        f"-Dcatalina.home={TOMCAT_HOME}",
        f"-Dcatalina.base={base}",
        f"-Djava.io.tmpdir={base / 'temp'}",
        "org.apache.catalina.startup.Bootstrap",
        "start",
    ]
    with (base / "server.log").open("wb") as log:
        return _launch("Tomcat 10", command, base, port, log)


def launch_jetty(classes: Path, port: int) -> Server:
    """Start Jetty 9 from Debian's start.jar with a private jetty.base."""
    start_jar = _require_file(JETTY_HOME / "start.jar", "Jetty 9")
    java = java_binary("java")
    base = Path(tempfile.mkdtemp(prefix="authproxy-jetty-"))
    (base / "tmp").mkdir()
    (base / "start.ini").write_text(JETTY_START_INI.format(port=port))
    write_webapp(base / "webapps" / "ROOT", jetty_api(), classes)
    command = [
        java,
        *JVM_FLAGS,
        f"-Djava.io.tmpdir={base / 'tmp'}",
        "-jar",
        str(start_jar),
        f"jetty.home={JETTY_HOME}",
        f"jetty.base={base}",
    ]
    with (base / "server.log").open("wb") as log:
        return _launch("Jetty 9", command, base, port, log)


def launch_nginx(port: int) -> Server:
    """Start nginx in the foreground with a private prefix, serving NGINX_SITE."""
    binary = nginx_binary()
    directory = Path(tempfile.mkdtemp(prefix="authproxy-nginx-upstream-"))
    # As in support/nginx.py: when run as root the workers drop privileges and must still reach this.
    directory.chmod(0o755)
    locations = "\n".join(
        NGINX_LOCATION.format(prefix=prefix, name=name) for name, prefix in NGINX_PREFIXES.items()
    )
    (directory / "authproxy.conf").write_text(NGINX_SITE.format(port=port, locations=locations))
    main = directory / "nginx.conf"
    main.write_text(main_conf(directory))
    command = [binary, "-c", str(main), "-p", f"{directory}/"]
    # stderr has what nginx says before it reads its error_log directive; error.log the rest.
    with (directory / "stderr.log").open("wb") as log:
        return _launch("nginx", command, directory, port, log, directory / "error.log")


@dataclass
class Upstreams:
    """The three external upstream servers, started together (their start-ups overlap)."""

    tomcat: Server
    jetty: Server
    nginx: Server

    def all(self) -> list[Server]:
        return [self.tomcat, self.jetty, self.nginx]


@contextlib.contextmanager
def running_upstreams(workdir: Path) -> Iterator[Upstreams]:
    """Compile the webapps, start Tomcat, Jetty and nginx, wait for all three; stop them all on exit."""
    compiled = compile_servlets([tomcat_api(), jetty_api()], workdir)
    tomcat_port, jetty_port, nginx_port = distinct_free_ports(3)
    started: list[Server] = []
    try:
        started.append(launch_tomcat(compiled["tomcat"], tomcat_port))
        started.append(launch_jetty(compiled["jetty"], jetty_port))
        started.append(launch_nginx(nginx_port))
        for server in started:
            server.wait_until_listening()
        yield Upstreams(*started)
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="session")
def upstream_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    """Tomcat 10, Jetty 9 and nginx, each started once per test session."""
    with running_upstreams(tmp_path_factory.mktemp("servlets")) as upstreams:
        yield upstreams


# --- the aiohttp upstream --------------------------------------------------------------------------------


def make_routing_app() -> web.Application:
    """The in-process upstream: `/public/{tail}`, `/admin/{tail}` and a catch-all, as the others."""

    def route(name: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            body = {
                "servlet": name,
                "path": request.path,
                "rawPath": request.raw_path,
                "user": request.headers.get("X-Forwarded-User"),
            }
            return web.Response(text=json.dumps(body) + "\n", content_type="text/plain")

        return handler

    app = web.Application()
    app.router.add_route("*", "/public/{tail:.*}", route("public"))
    app.router.add_route("*", "/admin/{tail:.*}", route("admin"))
    app.router.add_route("*", "/{tail:.*}", route("default"))
    return app


# --- seeing what the proxy sent --------------------------------------------------------------------------

PROBE_HEADER = "X-Probe"
_PROBE = re.compile(rb"\r\nx-probe:[ \t]*([^\r\n]*)", re.IGNORECASE)


@dataclass
class RecordingRelay(LoopbackServer):
    """A TCP relay to an upstream that records the request line of every request with an X-Probe header.

    `seen[probe]` lists the request targets (as bytes, decoded latin-1) that reached the upstream with
    that probe value. Only request heads are parsed: the proxy sends these tests' GETs without a body.
    """

    target_port: int
    seen: dict[str, list[str]] = field(default_factory=dict)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def _record(self, head: bytes) -> None:
        match = _PROBE.search(head)
        if match is None:
            return
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        target = " ".join(parts[1:-1]) if len(parts) >= 3 else line
        self.seen.setdefault(match.group(1).decode("latin-1").strip(), []).append(target)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.transport.abort()
            self._tasks.discard(task)
            return
        legs = [
            asyncio.ensure_future(self._requests(client_reader, upstream_writer)),
            asyncio.ensure_future(self._pump(upstream_reader, client_writer)),
        ]
        try:
            await asyncio.wait(legs, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # only stop() cancels
        finally:
            for leg in legs:
                leg.cancel()
            await asyncio.gather(*legs, return_exceptions=True)
            client_writer.transport.abort()
            upstream_writer.transport.abort()
            self._tasks.discard(task)

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pending = b""
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                pending += data
                while (end := pending.find(b"\r\n\r\n")) >= 0:
                    self._record(pending[:end])
                    pending = pending[end + 4 :]
                writer.write(data)
                await writer.drain()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

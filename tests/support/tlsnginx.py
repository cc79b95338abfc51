"""A real TLS upstream for the h1 client's TLS tests: Debian's nginx with certificates made here.

`make_pki(directory)` writes a private CA, a server certificate it signed (subject alternative names:
DNS `upstream.test` and IP 127.0.0.1), a second CA for client certificates and a client certificate
from it, all PEM. `TlsNginx` runs nginx in the foreground (`-p <dir>`, every file it writes in that
directory) with two TLS servers on loopback: `plain_port` answers any request with `tls ok`, and
`mutual_port` also requires a client certificate from the client CA (`ssl_verify_client on`) and
answers with the certificate's subject. nginx is found as tests/support/nginx.py finds it; when it is
missing the tests fail with the install command rather than skip.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from support.harness import free_port
from support.nginx import nginx_binary

SERVER_NAME = "upstream.test"
CLIENT_NAME = "h1 test client"

CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    ssl_certificate {dir}/server.pem;
    ssl_certificate_key {dir}/server.key;
    server {{
        listen 127.0.0.1:{plain} ssl;
        location / {{ return 200 "tls ok"; }}
    }}
    server {{
        listen 127.0.0.1:{mutual} ssl;
        ssl_verify_client on;
        ssl_client_certificate {dir}/client-ca.pem;
        location / {{ return 200 "client $ssl_client_s_dn"; }}
    }}
}}
"""


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ca(common: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder(
            issuer_name=_name(common),
            subject_name=_name(common),
            public_key=key.public_key(),
            serial_number=x509.random_serial_number(),
            not_valid_before=now - timedelta(hours=1),
            not_valid_after=now + timedelta(days=2),
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common: str,
    usage: x509.ObjectIdentifier,
    names: list[x509.GeneralName],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder(
            issuer_name=ca.subject,
            subject_name=_name(common),
            public_key=key.public_key(),
            serial_number=x509.random_serial_number(),
            not_valid_before=now - timedelta(hours=1),
            not_valid_after=now + timedelta(days=2),
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(directory: Path) -> None:
    """server-ca.pem, server.pem/.key, client-ca.pem, client.pem/.key in `directory`."""
    pem = serialization.Encoding.PEM
    server_ca, server_ca_key = _ca("h1 test server CA")
    server, server_key = _leaf(
        server_ca,
        server_ca_key,
        SERVER_NAME,
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName(SERVER_NAME), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))],
    )
    client_ca, client_ca_key = _ca("h1 test client CA")
    client, client_key = _leaf(client_ca, client_ca_key, CLIENT_NAME, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    (directory / "server-ca.pem").write_bytes(server_ca.public_bytes(pem))
    (directory / "server.pem").write_bytes(server.public_bytes(pem))
    (directory / "server.key").write_bytes(_key_pem(server_key))
    (directory / "client-ca.pem").write_bytes(client_ca.public_bytes(pem))
    (directory / "client.pem").write_bytes(client.public_bytes(pem))
    (directory / "client.key").write_bytes(_key_pem(client_key))


@dataclass
class TlsNginx:
    directory: Path
    plain_port: int
    mutual_port: int
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls) -> TlsNginx:
        binary = nginx_binary()
        directory = Path(tempfile.mkdtemp(prefix="authproxy-h1-tls-"))
        directory.chmod(0o755)
        make_pki(directory)
        plain, mutual = free_port(), free_port()
        (directory / "nginx.conf").write_text(CONF.format(dir=directory, plain=plain, mutual=mutual))
        stderr = (directory / "stderr.log").open("wb")
        process = subprocess.Popen(
            [binary, "-c", str(directory / "nginx.conf"), "-p", f"{directory}/"],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
        )
        stderr.close()
        nginx = cls(directory, plain, mutual, process)
        try:
            nginx._wait_listening()
        except BaseException:
            nginx.stop()
            raise
        return nginx

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 10
        for port in (self.plain_port, self.mutual_port):
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"nginx exited ({self.process.returncode}):\n{self.log()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"nginx did not listen on {port}:\n{self.log()}") from None
                    time.sleep(0.02)

    def log(self) -> str:
        return "".join(
            (self.directory / name).read_text(errors="replace")
            for name in ("stderr.log", "error.log")
            if (self.directory / name).exists()
        )

    def file(self, name: str) -> str:
        return str(self.directory / name)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

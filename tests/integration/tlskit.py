"""Helpers for the FTPS tests: a test CA, FTPS clients, CPU measurement.

Certificates are made here with `cryptography` (already a dependency of
pyOpenSSL): a CA and server certificates for 127.0.0.1/localhost, so clients
verify for real (curl --cacert, ftplib with a CA file, lftp ssl:ca-file).
"""

from __future__ import annotations

import datetime
import ftplib
import hashlib
import ipaddress
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import PASSWORD

NOW = datetime.datetime.now(datetime.UTC)


@dataclass
class CertAuthority:
    directory: Path
    key: Any
    cert: x509.Certificate

    @property
    def path(self) -> Path:
        return self.directory / "ca.pem"

    def issue(self, name: str, days: float = 90, cn: str = "ftpd test server") -> tuple[Path, Path]:
        """A server certificate for 127.0.0.1/localhost; returns (cert path, key path)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                .issuer_name(self.cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(NOW - datetime.timedelta(hours=1))
                .not_valid_after(NOW + datetime.timedelta(days=days))
                .add_extension(x509.SubjectAlternativeName([
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        cert_path = self.directory / f"{name}.crt"
        key_path = self.directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        return cert_path, key_path


def make_ca(directory: Path) -> CertAuthority:
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ftpd test CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    ca = CertAuthority(directory, key, cert)
    ca.path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ca


def tls_section(ca: CertAuthority, name: str = "server", **settings: object) -> dict[str, object]:
    cert, key = ca.issue(name)
    return {"certificate": str(cert), "key": str(key), **settings}


# --- Python clients

def client_context(ca: CertAuthority, version: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.path))
    if version == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    elif version == "1.3":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


class ReusingFTP_TLS(ftplib.FTP_TLS):
    """ftplib.FTP_TLS that resumes the control connection's TLS session on data
    connections: the one-line fix documented in docs/tls.md."""

    def ntransfercmd(self, cmd: str, rest: Any = None) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size


class ImplicitFTP_TLS(ReusingFTP_TLS):
    """Implicit FTPS: TLS from the first byte, PROT P assumed."""

    def connect(self, host: str = "", port: int = 0, timeout: float = -999,
                source_address: Any = None) -> str:
        if timeout != -999:
            self.timeout = timeout
        self.host, self.port = host, port
        raw = socket.create_connection((host, port), self.timeout)
        self.sock = self.context.wrap_socket(raw, server_hostname=host)
        self.af = self.sock.family
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self._prot_p = True
        self.welcome = self.getresp()
        return self.welcome


def ftps(daemon: Any, ca: CertAuthority, reuse: bool = True, version: str | None = None,
         user: str = "alice", port: int | None = None, implicit: bool = False,
         protect: bool = True) -> ftplib.FTP_TLS:
    """A logged-in FTPS client (explicit by default) with PROT P."""
    cls = ImplicitFTP_TLS if implicit else (ReusingFTP_TLS if reuse else ftplib.FTP_TLS)
    client = cls(context=client_context(ca, version), timeout=15)
    client.connect("127.0.0.1", port or daemon.port)
    client.login(user, PASSWORD)  # explicit: sends AUTH TLS first
    if protect and not implicit:
        client.prot_p()
    return client


# --- command-line clients

def curl(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", str(int(timeout)), *args],
                          capture_output=True, timeout=timeout + 5)


def lftp(script: str, timeout: float = 25) -> subprocess.CompletedProcess[str]:
    """Run an lftp script; on timeout the result has returncode -9 and the output so far.

    lftp keeps retrying a refused login whatever net:max-retries says, so a
    refusal test gives it a short timeout and looks at stderr.
    """
    prefix = ("set net:max-retries 1; set net:reconnect-interval-base 1; set net:timeout 8; "
              "set cmd:fail-exit true; ")
    args = ["lftp", "-c", prefix + script]
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:  # subprocess.run killed it
        def text(value: str | bytes | None) -> str:
            return value.decode(errors="replace") if isinstance(value, bytes) else value or ""
        return subprocess.CompletedProcess(args, -9, text(err.stdout), text(err.stderr))


# --- process measurement

def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for proc in processes:
        times = proc.cpu_times()
        total += times.user + times.system
    return total


def worker_cpu_over(daemon: Any, seconds: float) -> float:
    """CPU seconds the daemon's workers used in the next `seconds`."""
    workers = daemon.workers()
    before = cpu_seconds(workers)
    time.sleep(seconds)
    return cpu_seconds(workers) - before


def peer_fingerprint(port: int, ca: CertAuthority) -> str:
    """SHA-256 of the certificate an implicit-TLS or AUTH TLS server presents."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.recv(1024)  # 220
        raw.sendall(b"AUTH TLS\r\n")
        raw.recv(1024)  # 234
        with client_context(ca).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return hashlib.sha256(der).hexdigest()


def fingerprint(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()

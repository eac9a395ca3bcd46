"""FTPS set-up shared by every server: one self-signed certificate, and what curl negotiated.

The harness makes one RSA-2048 certificate per run with `openssl` in its temporary
directory; every server under test gets the same pair of files (key 0600, owned by root:
the servers read it as root before they drop privileges). RSA rather than EC because
Debian's vsftpd 3.0.3 allows only ECDHE-RSA-AES256-GCM-SHA384 for TLS 1.2 by default.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

CERT_DAYS = 2  # the certificate lives as long as one run


@dataclass(frozen=True)
class TlsFiles:
    """PEM certificate and its unencrypted private key."""

    certificate: Path
    key: Path


def openssl_req_argv(cert: Path, key: Path, common_name: str) -> list[str]:
    """`openssl req` making a self-signed RSA-2048 server certificate for `common_name`
    (an IP address: it is also the subjectAltName)."""
    return ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-sha256", "-nodes",
            "-days", str(CERT_DAYS), "-subj", f"/CN={common_name}",
            "-addext", f"subjectAltName=IP:{common_name}",
            "-addext", "extendedKeyUsage=serverAuth",
            "-keyout", str(key), "-out", str(cert)]


def make_certificate(directory: Path, common_name: str) -> TlsFiles:
    """Create directory/cert.pem and directory/key.pem (0600)."""
    directory.mkdir(mode=0o755, exist_ok=True)
    files = TlsFiles(directory / "cert.pem", directory / "key.pem")
    result = subprocess.run(openssl_req_argv(files.certificate, files.key, common_name),
                            capture_output=True, text=True, check=False, timeout=120)
    if result.returncode != 0 or not files.key.exists():
        raise RuntimeError(f"openssl req failed: {result.stderr.strip()[-500:]}")
    files.key.chmod(0o600)
    files.certificate.chmod(0o644)
    return files


_USING = re.compile(r"^\* SSL connection using (\S+) / (\S+)", re.M)
_REUSED = re.compile(r"^\* SSL re-using session ID", re.M)


@dataclass(frozen=True)
class Negotiated:
    """What `curl --verbose` reported for one FTPS transfer."""

    version: str | None  # e.g. TLSv1.3, of the control connection
    cipher: str | None
    handshakes: int  # control + data connections that completed a handshake
    resumed: int  # handshakes that reused a cached session (the data connections)

    def as_dict(self) -> dict[str, str | int | None]:
        return {"tls_version": self.version, "tls_cipher": self.cipher,
                "handshakes": self.handshakes, "resumed": self.resumed}


def parse_curl_verbose(stderr: str) -> Negotiated:
    """TLS version and cipher of the first handshake, handshake and resumption counts."""
    using = _USING.findall(stderr)
    first = using[0] if using else (None, None)
    return Negotiated(first[0], first[1], len(using), len(_REUSED.findall(stderr)))


def last_curl_error(stderr: str, secret: str) -> str:
    """curl's own error line ('curl: (64) ...'), or the last line, never showing `secret`."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not secret or secret not in ln]
    errors = [ln for ln in lines if ln.startswith("curl: (")]
    return (errors or lines or ["no output"])[-1][:300]

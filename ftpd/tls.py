"""FTPS set-up: reading and checking the certificate, building SSL contexts.

The supervisor reads the certificate and key (as root, so the key can stay
mode 0600 root) on every start and reload; a file that cannot be used makes
`app.load()` fail, so a reload keeps the previous generation and its
certificate. Workers only receive the parsed objects and build their SSL
contexts from memory after fork: they never need to read the key file.

Contexts are cheap to build (~0.3 ms) and a TLS session is bound to its
context: the session cache and the ticket keys live in it. ftpd gives every
TLS control connection a context of its own when `session_reuse` is on, so a
data connection that resumed a session resumed one issued to *this* control
connection (like vsftpd's process per session) and not one an attacker got on
a connection of their own. The session handling is in `tls_handler`.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from .config import Config, Problem
from .privileges import StartupError
from .settings import Endpoint
from .tlsrules import static_problems  # noqa: F401 (re-exported)

log = logging.getLogger("ftpd.tls")

EXPIRY_WARNING_DAYS = 14
# How long a TLS session can be resumed on a data connection. OpenSSL's
# default (300 s) would make every transfer of a control connection older
# than five minutes fail the reuse check; an FTP session is bounded by its
# idle timeout instead, so a day is plenty.
SESSION_LIFETIME = 86400
SESSION_ID_CONTEXT = b"ftpd"  # needed for server-side resumption; same for all contexts
VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
# Compression (CRIME) and renegotiation (a cheap CPU DoS) are never wanted.
OPTIONS = (SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
           | getattr(SSL, "OP_NO_RENEGOTIATION", 0))

try:  # private: pyOpenSSL has no public session_reused(); pyproject pins the versions
    from OpenSSL._util import lib as _openssl_lib
except ImportError:  # pragma: no cover - only with an unsupported pyOpenSSL
    _openssl_lib = None


@dataclass(frozen=True)
class TlsSetup:
    """The validated [tls] settings and the parsed certificate chain and key."""

    chain: tuple[x509.Certificate, ...]
    key: Any  # a cryptography private key
    min_version: str
    max_version: str
    ciphers: str
    require: str
    session_reuse: str
    implicit: tuple[Endpoint, ...]
    handshake_timeout: int
    certificate_path: str

    def context(self) -> SSL.Context:
        """A new server context; call once per worker, or per session for reuse checks."""
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(VERSIONS[self.min_version])
        ctx.set_max_proto_version(VERSIONS[self.max_version])
        ctx.set_options(OPTIONS)
        ctx.set_cipher_list(self.ciphers.encode("ascii"))
        ctx.use_certificate(self.chain[0])
        for intermediate in self.chain[1:]:
            ctx.add_extra_chain_cert(intermediate)
        ctx.use_privatekey(self.key)
        ctx.set_session_id(SESSION_ID_CONTEXT)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        ctx.set_timeout(SESSION_LIFETIME)
        return ctx

    @property
    def expires(self) -> datetime.datetime:
        return self.chain[0].not_valid_after_utc


def enabled(config: Config) -> bool:
    return bool(config.tls.certificate)


@dataclass
class Inspection:
    setup: TlsSetup | None
    problems: list[Problem]
    warnings: list[str]


def inspect(config: Config, now: datetime.datetime | None = None) -> Inspection:
    """Read and check the certificate and key; never raises for a bad file."""
    result = Inspection(None, [], [])
    if not enabled(config):
        return result
    cert_path = config.tls.certificate
    key_path = config.tls.key or cert_path
    cert_where = config.origin("tls.certificate")
    key_key = "tls.key" if config.tls.key else "tls.certificate"
    key_where = config.origin(key_key)

    cert_pem = _read(cert_path, cert_where, "tls.certificate", result.problems)
    key_pem = cert_pem if key_path == cert_path else \
        _read(key_path, key_where, key_key, result.problems)
    chain = _parse_chain(cert_pem, cert_where, cert_path, result.problems) \
        if cert_pem is not None else ()
    key = _parse_key(key_pem, key_where, key_key, key_path, result.problems) \
        if key_pem is not None else None
    if chain and key is not None and not _matches(chain, key, cert_where, result.problems):
        return result
    if result.problems or key is None:
        return result
    setup = TlsSetup(chain=chain, key=key, min_version=config.tls.min_version,
                     max_version=config.tls.max_version,
                     ciphers=config.tls.ciphers, require=config.tls.require,
                     session_reuse=config.tls.session_reuse,
                     implicit=config.tls.implicit_listen,
                     handshake_timeout=config.tls.handshake_timeout,
                     certificate_path=cert_path)
    try:
        setup.context()
    except SSL.Error as err:
        result.problems.append(Problem(
            config.origin("tls.ciphers"), "tls.ciphers",
            f"OpenSSL refuses the cipher list {config.tls.ciphers!r} ({_ssl_reason(err)}); "
            'use an OpenSSL cipher string such as "ECDHE+AESGCM:ECDHE+CHACHA20"'))
        return result
    if config.tls.session_reuse != "off" and (why := reuse_probe_problem()):
        result.problems.append(Problem(
            config.origin("tls.session_reuse"), "tls.session_reuse",
            f"{why}; set tls.session_reuse = \"off\" or install a pyOpenSSL release "
            "that ftpd supports (see pyproject.toml)"))
        return result
    result.warnings += _expiry_warnings(chain[0], cert_where, now)
    result.warnings += _key_mode_warnings(key_path, key_where, key_key)
    result.setup = setup
    return result


def _read(path: str, where: str, key: str, problems: list[Problem]) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)  # a certificate chain is a few KiB
    except FileNotFoundError:
        problems.append(Problem(where, key, f"{path} does not exist"))
    except PermissionError:
        problems.append(Problem(where, key, f"permission denied reading {path} (ftpd reads "
                                "it as root at start and reload; `ftpd check` needs root too)"))
    except IsADirectoryError:
        problems.append(Problem(where, key, f"{path} is a directory, expected a PEM file"))
    except OSError as err:
        problems.append(Problem(where, key, f"cannot read {path}: {err.strerror}"))
    return None


def _parse_chain(pem: bytes, where: str, path: str,
                 problems: list[Problem]) -> tuple[x509.Certificate, ...]:
    try:
        return tuple(x509.load_pem_x509_certificates(pem))
    except ValueError:
        problems.append(Problem(where, "tls.certificate",
                                f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"))
        return ()


def _parse_key(pem: bytes, where: str, key: str, path: str, problems: list[Problem]) -> Any:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        problems.append(Problem(where, key, f"the private key in {path} is encrypted; ftpd "
                                "needs it unencrypted (protect it with mode 0600 instead): "
                                "`openssl pkey -in KEY -out KEY.plain`"))
    except Exception as err:  # cryptography raises ValueError and others here
        if b"PRIVATE KEY" in pem:
            why = f"{path}: the private key cannot be read: {err}"
        elif key == "tls.certificate":
            why = (f"{path} holds no private key (tls.key is empty): set tls.key to the key "
                   "file, or append the key to the certificate file")
        else:
            why = f"{path} holds no PEM private key (-----BEGIN PRIVATE KEY-----)"
        problems.append(Problem(where, key, why))
    return None


def _public_der(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo))


def _matches(chain: tuple[x509.Certificate, ...], key: Any, where: str,
             problems: list[Problem]) -> bool:
    wanted = _public_der(key.public_key())
    if _public_der(chain[0].public_key()) == wanted:
        return True
    if any(_public_der(c.public_key()) == wanted for c in chain[1:]):
        problems.append(Problem(where, "tls.certificate",
                                "the key belongs to a later certificate of the chain; put the "
                                "server's own certificate first, then the intermediates"))
    else:
        problems.append(Problem(where, "tls.certificate",
                                "the private key does not match the certificate (different "
                                "public keys); install the key the certificate was issued for"))
    return False


def _expiry_warnings(cert: x509.Certificate, where: str,
                     now: datetime.datetime | None) -> list[str]:
    now = now or datetime.datetime.now(datetime.UTC)
    ends = cert.not_valid_after_utc
    name = _subject(cert)
    if ends <= now:
        return [f"{where}: tls.certificate: the certificate for {name} EXPIRED on "
                f"{ends:%Y-%m-%d %H:%M} UTC; clients that verify certificates refuse it: "
                "renew it, then reload ftpd"]
    if cert.not_valid_before_utc > now:
        return [f"{where}: tls.certificate: the certificate for {name} is not valid before "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check the clock"]
    left = ends - now
    if left < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        return [f"{where}: tls.certificate: the certificate for {name} expires on "
                f"{ends:%Y-%m-%d %H:%M} UTC (in {left.days} days, {left.seconds // 3600} "
                "hours): renew it, then reload ftpd (`systemctl reload ftpd`)"]
    return []


def _key_mode_warnings(path: str, where: str, key: str) -> list[str]:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return []
    if mode & stat.S_IROTH:
        return [f"{where}: {key}: {path} is readable by every local user; "
                f"`chmod 600 {path}` (ftpd reads it as root)"]
    return []


def _subject(cert: x509.Certificate) -> str:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        dns = names.value.get_values_for_type(x509.DNSName)
        if dns:
            return ", ".join(dns[:3])
    except x509.ExtensionNotFound:
        pass
    return cert.subject.rfc4514_string() or "(no subject)"


def _ssl_reason(err: SSL.Error) -> str:
    try:
        return "; ".join(str(e[2]) for e in err.args[0]) or str(err)
    except (IndexError, TypeError):
        return str(err)


def load(config: Config) -> tuple[TlsSetup | None, list[str]]:
    """The TLS set-up for a new generation (None without TLS) and its warnings.

    Raises StartupError listing every problem, so a reload keeps the old set-up.
    """
    result = inspect(config)
    if result.problems:
        raise StartupError("the TLS certificate cannot be used:\n"
                           + "\n".join(str(p) for p in result.problems))
    if result.setup is not None:
        log.info("TLS certificate %s for %s valid until %s UTC", result.setup.certificate_path,
                 _subject(result.setup.chain[0]), f"{result.setup.expires:%Y-%m-%d %H:%M}")
    return result.setup, result.warnings


# --- session reuse detection

def reuse_probe_problem() -> str | None:
    """Why session_reused() cannot work with the installed pyOpenSSL, or None."""
    if _openssl_lib is None or not hasattr(_openssl_lib, "SSL_session_reused"):
        return "the installed pyOpenSSL/cryptography has no SSL_session_reused binding"
    try:
        probe = SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD), None)
        session_reused(probe)
    except Exception as err:  # an attribute renamed in a new pyOpenSSL
        return f"the SSL_session_reused probe failed ({err!r})"
    return None


def session_reused(conn: SSL.Connection) -> bool:
    """Whether the handshake on `conn` resumed a session (TLS 1.2 id/ticket, 1.3 PSK)."""
    assert _openssl_lib is not None
    return bool(_openssl_lib.SSL_session_reused(conn._ssl))


# --- listeners

def endpoint_of(sock: socket.socket) -> tuple[str, int]:
    host, port = sock.getsockname()[:2]
    return str(ipaddress.ip_address(host)), int(port)


def is_implicit(sock: socket.socket, implicit: Iterable[Endpoint]) -> bool:
    """Whether the listening socket `sock` is one of the implicit FTPS endpoints."""
    here = endpoint_of(sock)
    return any((str(ipaddress.ip_address(e.host)), e.port) == here for e in implicit)

"""FTPS logic without a daemon: certificate checks, contexts, session reuse detection.

The reuse tests run real TLS handshakes in memory (pyOpenSSL server, Python
ssl client) for TLS 1.2 and 1.3; they are also the guard for the private
pyOpenSSL binding ftpd relies on (see the pin in pyproject.toml).
"""

from __future__ import annotations

import datetime
import socket
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from pyftpdlib.handlers import TLS_FTPHandler

from ftpd import config, tls, users
from ftpd.handler import SessionHandler
from ftpd.settings import Endpoint
from ftpd.tls_handler import TlsSessionHandler, handler_for_listener
from tests.integration.tlskit import make_ca


@pytest.fixture
def ca(tmp_path):
    return make_ca(tmp_path / "ca")


def load_config(tmp_path: Path, tls_lines: str, listen: str = "127.0.0.1:2121"):
    path = tmp_path / "ftpd.toml"
    path.write_text(f'[server]\nlisten = ["{listen}"]\nworkers = 1\n[tls]\n{tls_lines}\n')
    return config.load(str(path))


def setup_for(tmp_path: Path, ca, **extra: str) -> tls.TlsSetup:
    cert, key = ca.issue("unit")
    lines = f'certificate = "{cert}"\nkey = "{key}"\n' + "".join(
        f'{k} = "{v}"\n' for k, v in extra.items())
    result = tls.inspect(load_config(tmp_path, lines))
    assert result.problems == [] and result.setup is not None
    return result.setup


# --- session reuse detection

def test_the_private_binding_is_present():
    assert tls.reuse_probe_problem() is None


def _handshake(server_ctx: SSL.Context, client_ctx: ssl.SSLContext,
               session: ssl.SSLSession | None) -> tuple[SSL.Connection, ssl.SSLObject]:
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1",
                                 session=session)
    client_done = server_done = False
    for _ in range(20):
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        if data := outgoing.read():
            server.bio_write(data)
        if not server_done:
            try:
                server.do_handshake()
                server_done = True
            except SSL.WantReadError:
                pass
        try:
            while data := server.bio_read(65536):
                incoming.write(data)
        except SSL.WantReadError:
            pass
        if client_done and server_done:
            break
    assert client_done and server_done
    try:  # TLS 1.3: read the session tickets that follow the handshake
        client.read(1)
    except ssl.SSLWantReadError:
        pass
    return server, client


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_session_reused_sees_resumption_only_within_one_context(tmp_path, ca, version):
    setup = setup_for(tmp_path, ca)
    client_ctx = ssl.create_default_context(cafile=str(ca.path))
    client_ctx.maximum_version = client_ctx.minimum_version = getattr(
        ssl.TLSVersion, f"TLSv1_{version[-1]}")
    control_ctx = setup.context()  # one control connection's context

    server, client = _handshake(control_ctx, client_ctx, None)
    assert not tls.session_reused(server)
    assert server.get_protocol_version_name() == f"TLSv{version}"
    session = client.session

    data_server, data_client = _handshake(control_ctx, client_ctx, session)
    assert tls.session_reused(data_server) and data_client.session_reused
    again, _ = _handshake(control_ctx, client_ctx, session)  # every data connection
    assert tls.session_reused(again)

    # The same session offered to another control connection's context: a full
    # handshake, so the reuse check refuses it (data-connection theft).
    other, other_client = _handshake(setup.context(), client_ctx, session)
    assert not tls.session_reused(other) and not other_client.session_reused


# --- certificate checks

def test_inspect_reports_problems(tmp_path, ca):
    cert, key = ca.issue("a")
    _other_cert, other_key = ca.issue("b")
    encrypted = tmp_path / "enc.key"
    loaded = serialization.load_pem_private_key(key.read_bytes(), None)
    encrypted.write_bytes(loaded.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw")))

    def problems(lines: str) -> list[str]:
        return [str(p) for p in tls.inspect(load_config(tmp_path, lines)).problems]

    assert problems(f'certificate = "{cert}"\nkey = "{other_key}"') == [
        f"{tmp_path / 'ftpd.toml'}: tls.certificate: the private key does not match the "
        "certificate (different public keys); install the key the certificate was issued for"]
    assert "is encrypted" in problems(f'certificate = "{cert}"\nkey = "{encrypted}"')[0]
    assert "does not exist" in problems(f'certificate = "{tmp_path}/x.pem"\nkey = "{key}"')[0]
    assert "is a directory" in problems(f'certificate = "{tmp_path}"\nkey = "{key}"')[0]
    assert problems(f'certificate = "{cert}"\nkey = "{key}"') == []
    assert tls.inspect(load_config(tmp_path, "")).setup is None  # no TLS at all


def test_expiry_warnings(tmp_path, ca):
    cert, key = ca.issue("exp", days=30)
    cfg = load_config(tmp_path, f'certificate = "{cert}"\nkey = "{key}"')
    ends = tls.inspect(cfg).setup.expires  # type: ignore[union-attr]
    assert tls.inspect(cfg, now=ends - datetime.timedelta(days=15)).warnings == []
    soon = tls.inspect(cfg, now=ends - datetime.timedelta(days=13, hours=2)).warnings
    assert len(soon) == 1 and "expires on" in soon[0] and "(in 13 days, 2 hours)" in soon[0]
    late = tls.inspect(cfg, now=ends + datetime.timedelta(minutes=1)).warnings
    assert "EXPIRED" in late[0]


def test_static_rules(tmp_path, ca):
    with pytest.raises(config.ConfigError) as err:
        load_config(tmp_path, 'require = "all"\nimplicit_listen = ["127.0.0.1:2121"]\n'
                              'min_version = "1.3"\nmax_version = "1.2"')
    text = str(err.value)
    assert 'tls.require = "all" needs a certificate' in text
    assert "implicit FTPS needs a certificate" in text
    assert "127.0.0.1:2121 is also in server.listen" in text
    assert "tls.max_version: 1.2 is below tls.min_version (1.3)" in text


def test_context_settings(tmp_path, ca):
    setup = setup_for(tmp_path, ca, min_version="1.3", ciphers="ECDHE+CHACHA20")
    ctx = setup.context()
    assert ctx.get_timeout() == tls.SESSION_LIFETIME
    assert ctx.get_session_cache_mode() == SSL.SESS_CACHE_SERVER
    client_ctx = ssl.create_default_context(cafile=str(ca.path))
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, SSL.Error, AssertionError)):
        _handshake(ctx, client_ctx, None)


# --- handler classes and listeners

def test_handler_for_listener(tmp_path, ca):
    base = type("Configured", (SessionHandler,), {})
    assert handler_for_listener(base, None)(socket.socket()) is base
    setup = setup_for(tmp_path, ca)
    with socket.create_server(("127.0.0.1", 0)) as plain_sock, \
            socket.create_server(("127.0.0.1", 0)) as implicit_sock:
        port = implicit_sock.getsockname()[1]
        setup = tls.TlsSetup(**{**setup.__dict__,
                                "implicit": (Endpoint("127.0.0.1", port),)})
        pick = handler_for_listener(base, setup)
        explicit, implicit = pick(plain_sock), pick(implicit_sock)
    for cls in (explicit, implicit):
        assert issubclass(cls, TlsSessionHandler) and issubclass(cls, base)
        assert issubclass(cls, TLS_FTPHandler)
        assert cls.get_ssl_context() is None  # per session: made at AUTH TLS
    assert not explicit.implicit_tls
    assert implicit.implicit_tls and implicit.listener == f"127.0.0.1:{port}"
    off = handler_for_listener(base, tls.TlsSetup(**{**setup.__dict__, "session_reuse": "off"}))
    assert isinstance(off(socket.socket()).get_ssl_context(), SSL.Context)  # one per worker


# --- the users file override

def test_users_tls_override_parsed_and_rendered(tmp_path):
    from ftpd.auth import hash_password

    path = tmp_path / "users.toml"
    users.upsert(str(path), "scanner", hash_password("pw", log_n=10), str(tmp_path), "elr")
    text = path.read_text().replace("[users.scanner]\n",
                                    '[users.scanner]\ntls = { require = "none" }\n')
    path.write_text(text)
    assert users.load(str(path))["scanner"].tls_require == "none"
    users.upsert(str(path), "scanner", None, None, "elrw")  # rewrites the file
    assert 'tls = { require = "none" }' in path.read_text()
    assert users.load(str(path))["scanner"].tls_require == "none"
    with pytest.raises(users.UsersError, match=r"users\.scanner\.tls: must be a table"):
        users.parse(str(path), {"users": {"scanner": {
            "password": hash_password("pw", log_n=10), "root": str(tmp_path), "tls": "none"}}})

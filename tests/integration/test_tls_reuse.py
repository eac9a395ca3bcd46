"""Data-connection TLS session reuse: require | warn | off, TLS 1.2 and 1.3.

Python's ftplib.FTP_TLS does not resume the control connection's session on
data connections; tlskit.ReusingFTP_TLS is the documented one-line fix.
"""

from __future__ import annotations

import ftplib
import io
import socket
import struct
import time

import pytest

from tests.integration.tlskit import client_context, ftps, make_ca, tls_section


@pytest.fixture
def ca(tmp_path):
    return make_ca(tmp_path / "ca")


@pytest.mark.parametrize("policy", ["require", "warn", "off"])
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_reuse_policies(make_daemon, ca, policy, version):
    daemon = make_daemon(tls=tls_section(ca, session_reuse=policy))
    secret = b"secret payload\n" * 1000
    (daemon.root / "secret.txt").write_bytes(secret)

    # A client that resumes the session works under every policy.
    good = ftps(daemon, ca, reuse=True, version=version)
    out = io.BytesIO()
    good.retrbinary("RETR secret.txt", out.write)
    assert out.getvalue() == secret
    good.storbinary("STOR good.bin", io.BytesIO(b"g" * 50_000))
    good.quit()

    # Stock ftplib makes a new TLS session on every data connection.
    stock = ftps(daemon, ca, reuse=False, version=version)
    received: list[bytes] = []
    if policy == "require":
        with pytest.raises(ftplib.error_perm, match=r"^522 TLS session reuse required"):
            stock.retrbinary("RETR secret.txt", received.append)
        assert received == []  # refused before a byte of the file moved
        try:
            stock.storbinary("STOR stolen.bin", io.BytesIO(b"s" * 50_000))
        except ftplib.error_perm as err:
            assert str(err).startswith("522")
        except OSError:  # ssl.SSLEOFError: the server closed while ftplib was sending
            with pytest.raises(ftplib.error_perm, match=r"^522"):
                stock.voidresp()
        else:
            pytest.fail("STOR without session reuse was accepted")
        assert not (daemon.root / "stolen.bin").exists() or \
            (daemon.root / "stolen.bin").stat().st_size == 0
        assert stock.voidcmd("NOOP").startswith("200")  # the session is not dropped
    else:
        stock.retrbinary("RETR secret.txt", received.append)
        assert b"".join(received) == secret
        stock.storbinary("STOR stock.bin", io.BytesIO(b"s" * 50_000))
        stock.retrbinary("RETR secret.txt", lambda _: None)
    stock.quit()

    log = daemon.wait_log(r"event=disconnect .*data_tls_new=")
    warnings = [line for line in log.splitlines() if "event=tls_reuse_missing" in line]
    if policy == "require":
        assert warnings and all("action=refused" in w for w in warnings)
        assert all("remote_addr=127.0.0.1" in w for w in warnings)
    elif policy == "warn":
        assert len(warnings) == 1 and "action=allowed" in warnings[0]  # once per session
        daemon.wait_log(r"event=disconnect .*data_tls_reused=0 data_tls_new=3")
    else:
        assert warnings == []
    assert "data_tls_reused=2 data_tls_new=0" in log  # the good client
    assert f"tls_version=TLSv{version}" in log


def test_another_sessions_tls_session_is_refused(make_daemon, ca):
    """Data-connection theft: an attacker resumes *their own* TLS session on the
    victim's passive port. The reuse check must refuse it too, which is why
    every control connection has an SSL context (session cache, ticket keys)
    of its own."""
    daemon = make_daemon(workers=1, tls=tls_section(ca))
    (daemon.root / "secret.txt").write_bytes(b"for the victim only\n")
    ctx = client_context(ca)
    victim = ftps(daemon, ca)
    attacker = ftplib.FTP_TLS(context=ctx, timeout=15)
    attacker.connect("127.0.0.1", daemon.port)
    attacker.auth()  # no login needed to get a TLS session from the server
    attacker.voidcmd("NOOP")  # read the TLS 1.3 tickets

    host, port = victim.makepasv()
    victim.voidcmd("TYPE I")
    victim.putcmd("RETR secret.txt")
    assert victim.getresp().startswith("150")
    with socket.create_connection((host, port), timeout=15) as raw:
        stolen = ctx.wrap_socket(raw, server_hostname="127.0.0.1",
                                 session=attacker.sock.session)
        assert not stolen.session_reused  # the victim's context never saw this session
        data = b""
        try:
            while chunk := stolen.recv(4096):
                data += chunk
        except OSError:  # ssl.SSLError is one
            pass
    assert data == b""
    with pytest.raises(ftplib.error_perm, match=r"^522"):
        victim.voidresp()
    victim.quit()
    attacker.quit()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_reset_during_upload_is_not_a_complete_upload(make_daemon, ca, version):
    """A client whose kernel resets the data connection lost what it had not sent
    yet (TLS 1.3 clients that never read the server's session tickets do this on
    close). pyftpdlib answered 226; ftpd answers 426."""
    daemon = make_daemon(tls=tls_section(ca))
    client = ftps(daemon, ca, version=version)
    client.voidcmd("TYPE I")
    conn = client.transfercmd("STOR reset.bin")
    conn.sendall(b"r" * 100_000)
    # Let the server read what was sent: a reset that races unread data is
    # sometimes reported by the kernel as a plain EOF, indistinguishable from a
    # client that closes without close_notify (accepted, like vsftpd's default).
    daemon.wait_log(r"event=tls .*tls_mode=explicit")
    time.sleep(0.5)
    raw = socket.socket(fileno=conn.detach())  # skip the TLS close_notify
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()  # RST
    with pytest.raises(ftplib.error_temp, match=r"^426 Upload aborted: the client reset"):
        client.voidresp()
    client.quit()
    log = daemon.wait_log(r"event=upload .*completed=false")
    assert "event=upload_reset" in log

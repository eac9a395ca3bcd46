"""Implicit FTPS: TLS from the first byte on [tls] implicit_listen, served by the same workers."""

from __future__ import annotations

import ftplib
import io
import os
import signal
import socket

import pytest

from tests.conftest import PASSWORD, free_port
from tests.integration.tlskit import curl, ftps, lftp, make_ca, tls_section


@pytest.fixture
def ca(tmp_path):
    return make_ca(tmp_path / "ca")


def test_implicit_with_ftplib_curl_lftp(make_daemon, ca, tmp_path):
    port = free_port()
    daemon = make_daemon(tls=tls_section(ca, implicit_listen=[f"127.0.0.1:{port}"]))
    (daemon.root / "hello.txt").write_bytes(b"implicit hello\n")

    client = ftps(daemon, ca, implicit=True, port=port)
    assert client.getwelcome().startswith("220 ")
    assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
    payload = os.urandom(300_000)
    # No PBSZ/PROT sent: the data connections are protected from the start.
    client.storbinary("STOR up.bin", io.BytesIO(payload))
    out = io.BytesIO()
    client.retrbinary("RETR up.bin", out.write)
    assert out.getvalue() == payload
    client.voidcmd("REIN")  # a new login keeps PROT P on an implicit connection
    client.login("alice", PASSWORD)
    assert sorted(client.nlst()) == ["hello.txt", "up.bin"]
    client.quit()

    implicit_url = f"ftps://127.0.0.1:{port}/"
    auth = ["--cacert", str(ca.path), "-u", f"alice:{PASSWORD}"]
    result = curl(*auth, implicit_url + "hello.txt")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"implicit hello\n"
    result = curl("--tlsv1.3", *auth, implicit_url)
    assert b"up.bin" in result.stdout

    result = lftp(f"set ssl:ca-file {ca.path}; open -u alice,{PASSWORD} {implicit_url}; "
                  "cat hello.txt")
    assert result.returncode == 0, result.stderr
    assert "implicit hello" in result.stdout

    # The explicit listener of the same daemon is unchanged: plain and AUTH TLS.
    daemon.ftp().quit()
    ftps(daemon, ca).quit()

    log = daemon.wait_log(r"event=disconnect .*tls_mode=implicit")
    assert f"tls_mode=implicit listener=127.0.0.1:{port}" in log
    assert "tls_mode=explicit" in log
    assert "data_tls_reused=" in log and "event=tls_reuse_missing" not in log


def test_implicit_port_never_speaks_plain_and_require_all_applies(make_daemon, ca):
    port = free_port()
    daemon = make_daemon(tls=tls_section(ca, require="all", implicit_listen=[f"127.0.0.1:{port}"]))
    client = ftps(daemon, ca, implicit=True, port=port)
    client.prot_c()  # allowed as a command, but "all" refuses a clear transfer
    with pytest.raises(ftplib.error_perm, match=r"^521"):
        client.nlst()
    client.prot_p()
    assert client.nlst() == []
    client.quit()
    plain = ftplib.FTP()
    with pytest.raises((OSError, EOFError, ftplib.Error)):
        plain.connect("127.0.0.1", port, timeout=4)  # waits for a 220 that never comes in clear
        plain.login("alice", PASSWORD)
    plain.close()


def test_implicit_listener_added_and_removed_by_reload(make_daemon, ca):
    """The supervisor binds implicit_listen like server.listen, also on reload."""
    tls = tls_section(ca)
    daemon = make_daemon(tls=tls)
    port = free_port()
    daemon.write_config(tls={**tls, "implicit_listen": [f"127.0.0.1:{port}"]})
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"reload done: generation 2")
    ftps(daemon, ca, implicit=True, port=port).quit()

    daemon.write_config(tls=tls)
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"reload done: generation 3")
    with pytest.raises(ConnectionRefusedError):
        ftps(daemon, ca, implicit=True, port=port)


def test_implicit_sessions_obey_limits_without_clear_text(make_daemon, ca):
    port = free_port()
    daemon = make_daemon(server={"max_sessions_per_ip": 1},
                         tls=tls_section(ca, implicit_listen=[f"127.0.0.1:{port}"]))
    first = ftps(daemon, ca, implicit=True, port=port)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as second:
        second.settimeout(10)
        assert second.recv(100) == b""  # closed: no clear-text 421 on a TLS port
    daemon.wait_log(r"event=refused .*reason=")
    first.quit()
    daemon.wait_log(r"event=disconnect .*tls_mode=implicit")
    ftps(daemon, ca, implicit=True, port=port).quit()  # the slot is free again

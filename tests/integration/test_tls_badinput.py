"""Bad TLS input: every case ends with a reply or a closed socket, without a CPU
spin (pyftpdlib #683) and without disturbing other sessions.

One worker serves everything here, so its CPU time is the whole story.
"""

from __future__ import annotations

import ftplib
import io
import os
import socket
import ssl
import time

import pytest

from tests.conftest import free_port
from tests.integration.tlskit import ftps, make_ca, tls_section, worker_cpu_over

HANDSHAKE_TIMEOUT = 3
IDLE_CPU = 0.15  # seconds of CPU allowed over the measuring window (heartbeats are ~1 ms)


@pytest.fixture
def ca(tmp_path):
    return make_ca(tmp_path / "ca")


@pytest.fixture
def daemon(make_daemon, ca):
    port = free_port()
    daemon = make_daemon(workers=1, tls=tls_section(
        ca, handshake_timeout=HANDSHAKE_TIMEOUT, implicit_listen=[f"127.0.0.1:{port}"]))
    daemon.implicit_port = port
    (daemon.root / "f.bin").write_bytes(os.urandom(200_000))
    return daemon


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.settimeout(15)
    return sock


def after_auth_tls(port: int) -> socket.socket:
    sock = connect(port)
    assert sock.recv(1024).startswith(b"220")
    sock.sendall(b"AUTH TLS\r\n")
    assert sock.recv(1024).startswith(b"234")
    return sock


def client_hello() -> bytes:
    """A real TLS ClientHello, taken from an in-memory handshake."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def wait_closed(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    """Seconds until the server closed `sock`, and what it sent meanwhile."""
    start = time.monotonic()
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for more than {limit} s")
    return time.monotonic() - start, data


def good_session(daemon, ca) -> None:
    client = ftps(daemon, ca)
    out = io.BytesIO()
    client.retrbinary("RETR f.bin", out.write)
    assert out.getvalue() == (daemon.root / "f.bin").read_bytes()
    client.quit()


def test_stalled_handshakes_cost_nothing_and_are_closed(daemon, ca):
    hello = client_hello()
    parked = []
    for _ in range(3):
        parked.append(connect(daemon.implicit_port))  # a plain client waiting for a 220
        half = connect(daemon.implicit_port)
        half.sendall(hello[: len(hello) // 2])  # handshake abandoned midway
        parked.append(half)
        parked.append(after_auth_tls(daemon.port))  # AUTH TLS, then nothing
        half = after_auth_tls(daemon.port)
        half.sendall(hello[:20])
        parked.append(half)
    time.sleep(0.2)
    assert worker_cpu_over(daemon, 1.5) < IDLE_CPU  # no spin while they wait
    good_session(daemon, ca)  # others are served meanwhile
    for sock in parked:
        _elapsed, data = wait_closed(sock, HANDSHAKE_TIMEOUT + 5)
        assert b"220" not in data
        sock.close()
    assert worker_cpu_over(daemon, 1.0) < IDLE_CPU
    log = daemon.wait_log(r"event=tls_timeout", count=len(parked))
    assert log.count("event=tls_timeout") == len(parked)
    good_session(daemon, ca)


@pytest.mark.parametrize("case", ["plain text on implicit", "garbage on implicit",
                                  "garbage after AUTH TLS", "FTP command after AUTH TLS",
                                  "half a hello, then close"])
def test_bad_bytes_end_the_session_at_once(daemon, ca, case):
    if case == "plain text on implicit":
        sock = connect(daemon.implicit_port)
        sock.sendall(b"USER alice\r\nPASS secret\r\n")
    elif case == "garbage on implicit":
        sock = connect(daemon.implicit_port)
        sock.sendall(os.urandom(600))
    elif case == "garbage after AUTH TLS":
        sock = after_auth_tls(daemon.port)
        sock.sendall(b"\x16\x03\x01\x02\x00" + os.urandom(600))  # a record header, then noise
    elif case == "FTP command after AUTH TLS":
        sock = after_auth_tls(daemon.port)
        sock.sendall(b"USER alice\r\n")
    else:
        sock = connect(daemon.implicit_port)
        sock.sendall(client_hello()[:60])
        sock.shutdown(socket.SHUT_WR)
    elapsed, data = wait_closed(sock, 5)
    sock.close()
    assert elapsed < HANDSHAKE_TIMEOUT  # closed because of the bytes, not by the timer
    assert b"220" not in data and b"230" not in data
    assert worker_cpu_over(daemon, 1.0) < IDLE_CPU
    good_session(daemon, ca)
    log = daemon.wait_log(r"event=disconnect", count=2)
    if case == "half a hello, then close":
        assert "event=tls_failed" not in log  # an EOF mid-handshake is not the client's error
    else:
        assert "event=tls_failed" in log and "reason=" in log


def test_bad_data_connections_get_a_reply(daemon, ca):
    client = ftps(daemon, ca)
    client.voidcmd("TYPE I")

    # A data connection that never starts its TLS handshake: 522 after the deadline.
    host, port = client.makepasv()
    client.putcmd("RETR f.bin")
    with socket.create_connection((host, port), timeout=15) as silent:
        assert client.getresp().startswith("150")
        time.sleep(0.3)
        assert worker_cpu_over(daemon, 1.0) < IDLE_CPU
        start = time.monotonic()
        with pytest.raises(ftplib.error_perm, match=r"^522 TLS handshake on the data"):
            client.voidresp()
        assert time.monotonic() - start < HANDSHAKE_TIMEOUT + 2
        assert silent.recv(100) == b""

    # Garbage instead of a ClientHello on the data connection: 522 at once.
    host, port = client.makepasv()
    client.putcmd("RETR f.bin")
    with socket.create_connection((host, port), timeout=15) as noisy:
        assert client.getresp().startswith("150")
        noisy.sendall(os.urandom(500))
        with pytest.raises(ftplib.error_perm, match=r"^522"):
            client.voidresp()

    # A data connection closed halfway through its handshake: 426, nothing sent.
    host, port = client.makepasv()
    client.putcmd("RETR f.bin")
    with socket.create_connection((host, port), timeout=15) as quitter:
        assert client.getresp().startswith("150")
        quitter.sendall(client_hello()[:50])
    with pytest.raises(ftplib.error_temp, match=r"^426 The data connection closed during"):
        client.voidresp()

    assert client.voidcmd("NOOP").startswith("200")  # the control connection survived
    out = io.BytesIO()
    client.retrbinary("RETR f.bin", out.write)
    assert len(out.getvalue()) == 200_000
    client.quit()

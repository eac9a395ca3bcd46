"""Hostile input: fuzzed commands, connection floods, silent clients, password storms."""

from __future__ import annotations

import concurrent.futures
import ftplib
import re
import resource
import socket
import time

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import PASSWORD

COMMANDS = ["USER", "PASS", "CWD", "CDUP", "PWD", "MKD", "RMD", "DELE", "RNFR", "RNTO", "SIZE",
            "MDTM", "MLST", "TYPE", "MODE", "STRU", "REST", "PASV", "EPSV", "PORT", "EPRT",
            "STAT", "FEAT", "OPTS", "HELP", "SITE", "SITE CHMOD", "SYST", "NOOP", "ALLO", "ABOR",
            "REIN", "AUTH", "PBSZ", "PROT", "MFMT", "XPWD", "BOGUS", ""]
ARGS = st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                      blacklist_characters="\r\n"), max_size=300)
LINES = st.lists(st.tuples(st.sampled_from(COMMANDS), ARGS), min_size=1, max_size=8)
REPLY = re.compile(rb"^\d{3}[ -]")


def read_reply(sock: socket.socket, buffer: bytearray) -> bytes:
    """One complete (possibly multi-line) reply."""
    while True:
        while b"\r\n" not in buffer:
            chunk = sock.recv(65536)
            assert chunk, "server closed the connection without a reply"
            buffer.extend(chunk)
        line, _, rest = bytes(buffer).partition(b"\r\n")
        buffer[:] = rest
        assert REPLY.match(line) or line.startswith(b" ") or buffer, line
        if re.match(rb"^\d{3} ", line):
            return line


def worker_memory(daemon) -> int:
    return sum(p.memory_info().rss for p in daemon.workers())


@pytest.fixture
def fuzz_daemon(make_daemon):
    daemon = make_daemon(workers=2, server={"max_sessions_per_ip": 0},
                         security={"max_login_failures": 0})
    (daemon.root / "file.txt").write_text("x")
    return daemon


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lines=LINES)
def test_fuzzed_commands_get_replies_and_never_a_traceback(fuzz_daemon, lines):
    daemon = fuzz_daemon
    if not hasattr(daemon, "baseline"):
        daemon.baseline = worker_memory(daemon)
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        buffer = bytearray()
        assert read_reply(sock, buffer).startswith(b"220")
        sock.sendall(f"USER alice\r\nPASS {PASSWORD}\r\n".encode())
        read_reply(sock, buffer)
        assert read_reply(sock, buffer).startswith(b"230")
        for command, arg in lines:
            if command in ("QUIT", "REIN"):
                continue
            line = f"{command} {arg}".strip().encode("utf-8", "surrogateescape")
            sock.sendall(line + b"\r\n")
            reply = read_reply(sock, buffer)
            assert b"Traceback" not in reply and b"Error" not in reply[:3]
    assert "Traceback" not in daemon.log()
    # Memory stays bounded (generous: the point is no growth per session).
    assert worker_memory(daemon) < daemon.baseline + 80 * 1024 * 1024


def test_connection_flood_is_bounded_and_others_are_served(make_daemon):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    daemon = make_daemon(workers=2, server={"max_sessions_per_ip": 16, "max_sessions": 200})
    flood = []
    try:
        for _ in range(1500):
            sock = socket.socket()
            sock.setblocking(False)
            try:
                sock.connect(("127.0.0.1", daemon.port))
            except BlockingIOError:
                pass
            flood.append(sock)
        time.sleep(2)
        fds = sum(p.num_fds() for p in daemon.workers())
        assert fds < 200, f"workers hold {fds} descriptors under a flood"
        client = ftplib.FTP()
        client.connect("127.0.0.1", daemon.port, timeout=20, source_address=("127.0.0.2", 0))
        client.login("alice", PASSWORD)
        assert client.nlst() == []
        client.quit()
    finally:
        for sock in flood:
            sock.close()
    assert "event=refused" in daemon.log()


def test_client_that_never_sends_user_is_timed_out(make_daemon):
    daemon = make_daemon(server={"idle_timeout": 2})
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=15) as sock:
        assert sock.recv(1024).startswith(b"220")
        started = time.monotonic()
        data = sock.recv(1024)
        assert data.startswith(b"421"), data
        assert time.monotonic() - started < 10
    daemon.wait_log(r"event=idle_timeout")


def test_wrong_password_storm_does_not_starve_others(make_daemon):
    daemon = make_daemon(workers=2, server={"max_sessions_per_ip": 0},
                         security={"max_login_failures": 0})

    def wrong(_: int) -> str:
        client = ftplib.FTP()
        client.connect("127.0.0.1", daemon.port, timeout=60)
        try:
            client.login("alice", "wrong")
        except ftplib.error_perm as err:
            return str(err)[:3]
        finally:
            client.close()
        return "230"

    with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
        storm = [pool.submit(wrong, i) for i in range(80)]
        time.sleep(0.5)
        started = time.monotonic()
        client = ftplib.FTP()
        client.connect("127.0.0.1", daemon.port, timeout=60, source_address=("127.0.0.2", 0))
        client.login("alice", PASSWORD)
        assert client.voidcmd("NOOP").startswith("200")
        client.quit()
        legit = time.monotonic() - started
        results = [f.result(120) for f in storm]
    assert set(results) == {"530"}
    assert legit < 30, legit  # served while 80 wrong guesses were being checked
    procs = psutil.Process(daemon.proc.pid).children()
    assert len(procs) == 2

"""Session limits hold daemon-wide, across workers."""

from __future__ import annotations

import ftplib
import re
import socket
import time

import psutil
import pytest

from tests.conftest import wait_for


def connect(daemon) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
    return sock, sock.recv(1024)


def admitted(daemon) -> bool:
    """Whether a new connection is greeted (not refused by a limit)."""
    sock, banner = connect(daemon)
    sock.close()
    return banner.startswith(b"220")


def serving_pids(daemon, socks) -> set[int]:
    ports = {s.getsockname()[1] for s in socks}
    log = daemon.log()
    return {int(pid) for pid, port in re.findall(
        r"ftpd\[(\d+)\] INFO session opened .* remote_port=(\d+) ", log) if int(port) in ports}


def open_spread(daemon, count: int) -> list[socket.socket]:
    """`count` sessions, retried until they are served by at least two workers."""
    for _ in range(20):
        socks = []
        for _ in range(count):
            sock, banner = connect(daemon)
            assert banner.startswith(b"220"), banner
            socks.append(sock)
        daemon.wait_log(r"session opened", count=1)
        time.sleep(0.2)
        if len(serving_pids(daemon, socks)) >= 2:
            return socks
        for sock in socks:
            sock.close()
        time.sleep(0.3)
    pytest.fail("sessions never spread over two workers")


def test_max_sessions_across_workers(make_daemon):
    daemon = make_daemon(workers=2, server={"max_sessions": 3, "max_sessions_per_ip": 0})
    socks = open_spread(daemon, 3)
    sock, banner = connect(daemon)
    assert banner.startswith(b"421 Too many sessions on this server"), banner
    sock.close()
    socks.pop().close()
    # The release is seen once the worker notices the close.
    assert wait_for(lambda: admitted(daemon), 10, "a session slot freed")
    for s in socks:
        s.close()


def test_max_sessions_per_ip(make_daemon):
    daemon = make_daemon(workers=2, server={"max_sessions_per_ip": 2})
    socks = open_spread(daemon, 2)
    sock, banner = connect(daemon)
    assert banner.startswith(b"421 Too many sessions from your address"), banner
    sock.close()
    assert "event=refused" in daemon.wait_log("event=refused")
    for s in socks:
        s.close()


def test_max_sessions_per_user(make_daemon):
    daemon = make_daemon(workers=2, server={"max_sessions_per_user": 1})
    first = daemon.ftp()
    with pytest.raises(ftplib.error_temp, match="421 Too many sessions for this user"):
        daemon.ftp()
    first.quit()
    deadline = time.monotonic() + 10
    while True:
        try:
            daemon.ftp().quit()
            break
        except ftplib.error_temp:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_sessions_of_a_killed_worker_are_released(make_daemon):
    daemon = make_daemon(workers=2, server={"max_sessions_per_ip": 2})
    socks = open_spread(daemon, 2)
    victim = next(iter(serving_pids(daemon, socks[:1])))
    psutil.Process(victim).kill()
    daemon.wait_log(r"exited with status -9")
    # The survivor's session stays open: only releasing the dead worker's
    # count leaves room for a new one under the limit of 2.
    assert wait_for(lambda: admitted(daemon), 10, "the dead worker's sessions released")
    for s in socks:
        s.close()

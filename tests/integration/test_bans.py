"""Failed logins ban an address across all workers and across reloads."""

from __future__ import annotations

import ftplib
import signal
import socket

import pytest


def failed_login(daemon) -> None:
    client = ftplib.FTP()
    client.connect("127.0.0.1", daemon.port, timeout=15)
    with pytest.raises(ftplib.error_perm, match="530"):
        client.login("alice", "not-the-password")
    client.close()


def banner(daemon) -> bytes:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        return sock.recv(1024)


def test_ban_after_failures_holds_on_every_worker_and_after_reload(make_daemon):
    daemon = make_daemon(workers=2, security={"max_login_failures": 3, "failure_window": 60,
                                               "ban_time": 120})
    for _ in range(3):
        failed_login(daemon)
    log = daemon.wait_log(r"event=ban ")
    assert "remote_addr=127.0.0.1" in log and "ban_seconds=120" in log
    assert log.count("event=login_failed") == 3
    # Several connections land on both workers: all refused.
    replies = [banner(daemon) for _ in range(6)]
    assert all(r.startswith(b"421 Too many failed logins") for r in replies), replies
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"reload done: generation 2")
    assert banner(daemon).startswith(b"421 Too many failed logins")


def test_failures_below_the_threshold_do_not_ban(make_daemon):
    daemon = make_daemon(workers=2, security={"max_login_failures": 3})
    for _ in range(2):
        failed_login(daemon)
    daemon.ftp().quit()
    assert "event=ban" not in daemon.log()

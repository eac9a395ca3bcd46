"""The supervisor with real processes: respawn, heartbeat, reload, stop, orphans."""

from __future__ import annotations

import ftplib
import hashlib
import os
import re
import signal
import socket
import time

import psutil
import pytest

from tests.conftest import wait_for

BIG = 24 * 1024 * 1024


def _session_pid(daemon, client) -> int:
    """The pid of the worker serving `client` (from its login event)."""
    port = client.sock.getsockname()[1]
    log = daemon.wait_log(rf"INFO login of .* remote_port={port} ")
    return int(re.search(rf"ftpd\[(\d+)\] INFO login of .* remote_port={port} ", log).group(1))


class SlowDownload:
    """A RETR read in steps, so a signal can arrive while it is in flight."""

    def __init__(self, client, name: str) -> None:
        client.voidcmd("TYPE I")
        self.client = client
        self.conn = client.transfercmd(f"RETR {name}")
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, amount: int) -> None:
        while amount > 0:
            chunk = self.conn.recv(min(65536, amount))
            if not chunk:
                return
            self.digest.update(chunk)
            self.size += len(chunk)
            amount -= len(chunk)

    def finish(self) -> str:
        self.read(1 << 40)
        self.conn.close()
        return self.client.voidresp()


def _big_file(daemon) -> str:
    data = os.urandom(1024 * 1024) * (BIG // (1024 * 1024))
    (daemon.root / "big.bin").write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_killed_worker_is_replaced_and_other_sessions_survive(make_daemon):
    daemon = make_daemon(workers=2)
    client = daemon.ftp()
    serving = _session_pid(daemon, client)
    victim = next(p for p in daemon.workers() if p.pid != serving)
    victim.kill()
    daemon.wait_log(rf"\(pid {victim.pid}\) exited with status -9")
    wait_for(lambda: len(daemon.workers()) == 2 and victim.pid not in
          {p.pid for p in daemon.workers()}, what="a replacement worker")
    assert client.nlst() == []
    client.quit()


def test_stuck_worker_is_killed_by_heartbeat_timeout(make_daemon):
    daemon = make_daemon(workers=2, server={"worker_timeout": 3})
    victim = daemon.workers()[0]
    victim.suspend()
    daemon.wait_log(r"made no progress for \d+ s; killing it", timeout=15)
    wait_for(lambda: len(daemon.workers()) == 2 and victim.pid not in
          {p.pid for p in daemon.workers()}, what="replacement of the stuck worker")
    daemon.ftp().quit()


def test_crash_loop_stops_the_supervisor(make_daemon):
    daemon = make_daemon(workers=1)
    daemon.expect_failure = True
    killed: set[int] = set()
    deadline = time.monotonic() + 30
    while daemon.proc.poll() is None and time.monotonic() < deadline:
        try:
            for worker in daemon.workers():
                if worker.pid not in killed:
                    worker.kill()
                    killed.add(worker.pid)
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.05)
    assert daemon.proc.wait(10) == 1
    assert "instead of respawning in a loop" in daemon.log()


def test_workers_exit_when_the_supervisor_dies(make_daemon):
    daemon = make_daemon(workers=2)
    workers = daemon.workers()
    daemon.expect_failure = True
    os.kill(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait(5)
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, alive


def test_reload_new_banner_while_a_transfer_finishes_intact(make_daemon):
    daemon = make_daemon(workers=2)
    digest = _big_file(daemon)
    old = daemon.ftp()
    download = SlowDownload(old, "big.bin")
    download.read(1024 * 1024)
    daemon.write_config(server={"banner": "Reloaded banner."})
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"reload done: generation 2 serving")
    fresh = daemon.ftp()
    assert "Reloaded banner." in fresh.getwelcome()
    fresh.quit()
    assert download.finish().startswith("226")
    assert download.size == BIG and download.digest.hexdigest() == digest
    assert old.voidcmd("NOOP").startswith("200")  # the old session is still served
    old.quit()
    daemon.wait_log(r"finished draining", count=2)


def test_reload_with_broken_config_keeps_serving(make_daemon):
    daemon = make_daemon()
    daemon.config_path.write_text(daemon.config_path.read_text() + "\n[server]\nbogus = 1\n")
    daemon.signal(signal.SIGHUP)
    log = daemon.wait_log(r"reload failed, still serving")
    assert "server" in log
    client = daemon.ftp()
    assert client.voidcmd("NOOP").startswith("200")
    client.quit()


def test_reload_bad_key_is_named(make_daemon):
    daemon = make_daemon()
    daemon.write_config(log={"level": "loud"})
    daemon.signal(signal.SIGHUP)
    log = daemon.wait_log(r"reload failed")
    assert "log.level: 'loud' is not one of" in log
    daemon.ftp().quit()


def test_sigterm_lets_a_transfer_finish_then_exits_zero(make_daemon):
    daemon = make_daemon(workers=2)
    digest = _big_file(daemon)
    idle = daemon.ftp()
    client = daemon.ftp()
    download = SlowDownload(client, "big.bin")
    download.read(1024 * 1024)
    daemon.signal(signal.SIGTERM)
    daemon.wait_log(r"stopping \(received SIGTERM\)")
    # New connections are refused (not queued) once every worker has seen the
    # signal; the supervisor closed its copy of the listener already.
    def refused() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", daemon.port), timeout=3) as sock:
                return sock.recv(10).startswith(b"421")
        except OSError:
            return True

    wait_for(refused, what="new connections refused")
    assert download.finish().startswith("226")
    assert download.size == BIG and download.digest.hexdigest() == digest
    assert daemon.proc.wait(20) == 0
    with pytest.raises(ftplib.error_temp, match="421 Server shutting down"):
        idle.voidcmd("NOOP")

"""Shared fixtures: a real ftpd daemon on free ports with a temporary config.

The daemon runs as a separate process (`python -m ftpd serve`), is stopped
by PID, and after each test we check that it left no child processes behind.
"""

from __future__ import annotations

import ftplib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

PASSWORD = "s3cret-Pa55"


def wait_for(predicate, timeout: float = 15.0, what: str = "condition"):
    """Poll `predicate` until it returns something true; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_for_log(read, proc, pattern: str, timeout: float = 20.0,
                 count: int = 1) -> str:
    """The log text once `pattern` matched `count` times; fails early if `proc` exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = read()
        if len(re.findall(pattern, text)) >= count:
            return str(text)
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"log never matched {pattern!r} (x{count}):\n{read()[-4000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_range(size: int) -> range:
    """A run of `size` ports on 127.0.0.1 that nothing listens on right now."""
    for _ in range(200):
        start = random.randrange(30000, 60000 - size)
        ports = range(start, start + size)
        try:
            socks = []
            for port in ports:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return ports
    raise RuntimeError("no free port range")


def add_user(users_file: Path, name: str, root: Path, permissions: str = "elradfmwMT",
             password: str = PASSWORD) -> None:
    subprocess.run([sys.executable, "-m", "ftpd", "passwd", "-f", str(users_file), name,
                    "--root", str(root), "--permissions", permissions],
                   input=password + "\n", text=True, check=True, capture_output=True)


@dataclass
class Daemon:
    tmp: Path
    port: int
    passive: range
    settings: dict[str, dict[str, object]]
    proc: subprocess.Popen[bytes] | None = None
    config_path: Path = field(init=False)
    log_path: Path = field(init=False)
    root: Path = field(init=False)
    users_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config_path = self.tmp / "ftpd.toml"
        self.log_path = self.tmp / "ftpd.log"
        self.root = self.tmp / "root"
        self.users_file = self.tmp / "users.toml"
        self.root.mkdir(exist_ok=True)

    def write_config(self, **sections: dict[str, object]) -> None:
        merged = {k: dict(v) for k, v in self.settings.items()}
        for section, values in sections.items():
            merged.setdefault(section, {}).update(values)
        lines = []
        for section, values in merged.items():
            lines.append(f"[{section}]")
            for key, value in values.items():
                lines.append(f"{key} = {_toml(value)}")
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, wait: bool = True) -> Daemon:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ftpd", "serve", "-c", str(self.config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_log(r"ready: \d+ workers serving")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 20.0, count: int = 1) -> str:
        return wait_for_log(self.log, self.proc, pattern, timeout, count)

    def ftp(self, user: str = "alice", password: str = PASSWORD, timeout: float = 15) -> ftplib.FTP:
        client = ftplib.FTP()
        client.connect("127.0.0.1", self.port, timeout=timeout)
        client.login(user, password)
        return client

    def workers(self) -> list[psutil.Process]:
        assert self.proc is not None
        return psutil.Process(self.proc.pid).children()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    def stop(self, timeout: float = 40) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group we started
            code = self.proc.wait(5)
        self._log.close()
        return code


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[object]:
    """Factory: make_daemon(workers=2, passive_size=20, **sections) -> Daemon (configured)."""
    started: list[Daemon] = []

    def factory(workers: int = 2, passive_size: int = 20, start: bool = True,
                **sections: dict[str, object]) -> Daemon:
        directory = tmp_path / f"d{len(started)}"
        directory.mkdir()
        passive = free_range(passive_size)
        port = free_port()
        settings: dict[str, dict[str, object]] = {
            "server": {"listen": [f"127.0.0.1:{port}"], "workers": workers, "user": "root",
                       "shutdown_timeout": 10, "worker_timeout": 10},
            "passive": {"ports": f"{passive.start}-{passive.stop - 1}"},
            "users": {"file": str(directory / "users.toml")},
            "log": {"level": "info"},
        }
        daemon = Daemon(directory, port, passive, settings)
        add_user(daemon.users_file, "alice", daemon.root)
        daemon.write_config(**sections)
        started.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield factory
    for daemon in started:
        pid = daemon.proc.pid if daemon.proc else None
        children = psutil.Process(pid).children(recursive=True) \
            if pid and daemon.proc and daemon.proc.poll() is None else []
        code = daemon.stop()
        leftovers = [c for c in children if c.is_running() and c.status() != "zombie"]
        assert not leftovers, f"daemon left processes behind: {leftovers}"
        assert code == 0 or getattr(daemon, "expect_failure", False), \
            f"daemon exited with {code}:\n{daemon.log()[-3000:]}"
        assert "Traceback" not in daemon.log() or getattr(daemon, "allow_traceback", False), \
            daemon.log()[-3000:]


@pytest.fixture
def daemon(make_daemon: object) -> Daemon:
    return make_daemon()  # type: ignore[operator,no-any-return]

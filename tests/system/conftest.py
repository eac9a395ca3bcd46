"""Fixtures for tests under a real systemd: a booted container with ftpd installed.

`booted_container` (session) boots one container and installs the .deb built
by packaging/build-deb (or the one named by $FTPD_DEB). `ftpd` (per test)
puts the service back to "installed, stopped, default configuration, user
alice" first, so tests do not depend on their order.

Needs root, systemd-nspawn and mmdebstrap (installed with apt-get if missing).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .container import CACHE, REPO, Container, ContainerError, ensure_host_tools, rootfs_dir

TESTS_DIR = Path(__file__).resolve().parent
DEB_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "ftpd", "packaging", "systemd", "etc")
FTP_USER = "alice"
FTP_PASSWORD = "correct horse battery"
FTP_ROOT = "/srv/ftp/alice"
USERS_FILE = "/etc/ftpd/users.toml"
TIMINGS: dict[str, float] = {}


def _require_root() -> None:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("system tests need root on Linux")


@pytest.fixture(scope="session")
def rootfs() -> Path:
    _require_root()
    ensure_host_tools()
    started = time.monotonic()
    path = rootfs_dir()
    TIMINGS["rootfs"] = time.monotonic() - started
    return path


def _deb_key() -> str:
    digest = hashlib.sha256()
    for name in DEB_INPUTS:
        top = REPO / name
        paths = sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]
        for path in paths:
            if path.exists() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(REPO)).encode() + b"\0")
                digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@pytest.fixture(scope="session")
def ftpd_deb() -> Path:
    """$FTPD_DEB, or packaging/build-deb's output, rebuilt when its inputs change."""
    _require_root()
    if os.environ.get("FTPD_DEB"):
        return Path(os.environ["FTPD_DEB"]).resolve()
    out = CACHE / "deb" / _deb_key()
    debs = sorted(out.glob("ftpd_*.deb"))
    if debs:
        return debs[-1]
    if out.parent.exists():
        shutil.rmtree(out.parent)
    started = time.monotonic()
    result = subprocess.run([str(REPO / "packaging" / "build-deb"), "--output-dir", str(out)],
                            capture_output=True, text=True, timeout=900, check=False)
    TIMINGS["build-deb"] = time.monotonic() - started
    if result.returncode != 0:
        pytest.fail(f"packaging/build-deb failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def booted_container(rootfs: Path, ftpd_deb: Path) -> Iterator[Container]:
    binds = {ftpd_deb.parent: "/mnt/dist", TESTS_DIR: "/mnt/tests"}
    with Container(rootfs, binds_ro=binds) as container:
        container.boot()
        container.wait_until_running()
        TIMINGS["boot"] = container.boot_seconds
        started = time.monotonic()
        container.run("apt-get", "install", "-y", "--no-install-recommends",
                      f"/mnt/dist/{ftpd_deb.name}", env={"DEBIAN_FRONTEND": "noninteractive"},
                      timeout=120)
        TIMINGS["install"] = time.monotonic() - started
        for prop in ("ActiveState", "InvocationID", "UnitFileState"):
            container.facts[f"after_install.{prop}"] = container.show("ftpd.service", prop)
        yield container


class Client:
    """ftpclient.py running in the background inside the container."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self.lines.put(json.loads(line))
            except json.JSONDecodeError:
                self.lines.put({"event": "noise", "line": line})

    def expect(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"ftpclient: no {event!r} within {timeout} s")
            try:
                message = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if message["event"] == event:
                return message
            if message["event"] == "error":
                raise AssertionError(f"ftpclient failed: {message['message']}")

    def close(self, timeout: float = 30.0) -> int:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)


@dataclass
class Ftpd:
    """The installed ftpd service in the booted container, and ways to poke it."""

    container: Container
    since: str = ""
    clients: list[Client] = field(default_factory=list)

    def reset(self) -> None:
        c = self.container
        c.systemctl("stop", "ftpd.socket", "ftpd.service", check=False, timeout=90)
        c.systemctl("disable", "ftpd.socket", check=False)
        c.run("rm", "-rf", "/etc/systemd/system/ftpd.service.d",
              "/etc/systemd/system/ftpd.socket.d", "/etc/ftpd/conf.d")
        c.systemctl("daemon-reload")
        c.systemctl("reset-failed", "ftpd.service", "ftpd.socket", check=False)
        c.sh(f"test -d {FTP_ROOT} || install -d -o ftpd -g ftpd {FTP_ROOT}")
        c.run("ftpd", "passwd", "-f", USERS_FILE, FTP_USER, "--root", FTP_ROOT,
              "--permissions", "elradfmw", input=FTP_PASSWORD + "\n")
        self.since = c.run("date", "+@%s.%N").stdout.strip()

    def start(self) -> None:
        self.container.systemctl("start", "ftpd.service", timeout=60)

    def main_pid(self) -> int:
        return int(self.container.show("ftpd.service", "MainPID"))

    def state(self) -> str:
        return self.container.show("ftpd.service", "ActiveState")

    def status_text(self) -> str:
        return self.container.show("ftpd.service", "StatusText")

    def drop_in(self, text: str, unit: str = "ftpd.service") -> None:
        self.container.write(f"/etc/systemd/system/{unit}.d/50-test.conf", text)
        self.container.systemctl("daemon-reload")

    def config(self, name: str, text: str) -> str:
        path = f"/etc/ftpd/conf.d/{name}.toml"
        self.container.write(path, text)
        return path

    def journal(self, *args: str) -> str:
        return self.container.journal(f"--since={self.since}", *args)

    def client(self, *args: str, timeout: float = 30.0) -> dict[str, Any]:
        """Run ftpclient.py to the end (socket timeouts of `timeout`); its last message."""
        result = self.container.run("python3", "/mnt/tests/ftpclient.py", *args, check=False,
                                    timeout=timeout * 2 + 10,
                                    env={"FTPCLIENT_TIMEOUT": str(timeout)})
        lines: list[dict[str, Any]] = [
            json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        assert lines, f"ftpclient printed nothing; stderr: {result.stderr}"
        return lines[-1]

    def client_bg(self, *args: str) -> Client:
        client = Client(self.container.popen("python3", "/mnt/tests/ftpclient.py", *args))
        self.clients.append(client)
        return client

    def login_args(self) -> tuple[str, str]:
        return FTP_USER, FTP_PASSWORD


def wait_for(predicate: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture()
def ftpd(booted_container: Container) -> Iterator[Ftpd]:
    service = Ftpd(booted_container)
    service.reset()
    yield service
    for client in service.clients:
        client.close(timeout=5)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test's report carries ftpd's journal from that test."""
    report = yield
    if report.when == "call":
        TIMINGS[item.name] = report.duration
    service = getattr(item, "funcargs", {}).get("ftpd")
    if report.when == "call" and report.failed and isinstance(service, Ftpd):
        try:
            journal = service.journal("-u", "ftpd.service", "-u", "ftpd.socket")
        except (ContainerError, subprocess.SubprocessError) as err:
            journal = f"(journal unavailable: {err})"
        report.sections.append(("journal of ftpd.service", journal))
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.section("system test timings (s)")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{name:50} {seconds:6.1f}")



"""ftpd in the namespace lab: start the daemon in srv, drive real clients elsewhere.

    with LabFtpd(lab, passive={"address": PUBLIC_IP}) as ftpd:
        out = curl(lab, "cli", ftpd.url(PUBLIC_IP, "f.txt"), "--disable-epsv",
                   "--no-ftp-skip-pasv-ip")
        assert out.returncode == 0

The daemon listens on the lab's default control port (21) with its default
forwarded passive range unless told otherwise, runs workers as root unless
`user` is given, and is stopped by PID (SIGTERM, waiting for the supervisor,
which waits for its workers) when the block ends.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import wait_for_log

from .lab import Lab

PASSWORD = "Lab-pa55word"
DRIVER = str(Path(__file__).with_name("ftp_driver.py"))
FILE_TEXT = "hello through the lab\n"

# Clients must give up quickly where a firewall drops packets, and never retry forever.
LFTP_SETTINGS = (
    "set net:max-retries 1; set net:timeout 4; set net:reconnect-interval-base 1; "
    "set net:persist-retries 0; set ftp:ssl-allow no; set ftp:fix-pasv-address no; "
)  # (not cmd:fail-exit: with it lftp 4.9 hangs after a failed command)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


class LabFtpd:
    """ftpd running in the lab's srv namespace with a config written for the test."""

    def __init__(self, lab: Lab, *, control_port: int | None = None,
                 passive_range: tuple[int, int] | None = None, workers: int = 1,
                 user: str = "root", **sections: dict[str, object]) -> None:
        self.lab = lab
        self.control_port = control_port or lab.control_port
        low, high = passive_range or lab.passive_range
        # World-readable (0755): workers may run as an unprivileged user.
        self.dir = Path(tempfile.mkdtemp(prefix="ftpdnat-"))
        self.dir.chmod(0o755)
        self.root = self.dir / "root"
        self.root.mkdir(mode=0o755)
        (self.root / "f.txt").write_text(FILE_TEXT)
        (self.root / "f.txt").chmod(0o644)
        self.users_file = self.dir / "users.toml"
        self.log_path = self.dir / "ftpd.log"
        settings: dict[str, dict[str, object]] = {
            "server": {"listen": [f"0.0.0.0:{self.control_port}"], "workers": workers,
                       "user": user, "group": "nogroup" if user != "root" else "root",
                       "shutdown_timeout": 2, "worker_timeout": 10,
                       "max_sessions_per_ip": 0},
            "passive": {"ports": f"{low}-{high}"},
            "users": {"file": str(self.users_file)},
            "log": {"level": "info"},
        }
        for section, values in sections.items():
            settings.setdefault(section, {}).update(values)
        self.config_path = self.dir / "ftpd.toml"
        self.config_path.write_text("".join(
            f"[{section}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items())
            for section, values in settings.items()))
        subprocess.run([sys.executable, "-m", "ftpd", "passwd", "-f", str(self.users_file),
                        "alice", "--root", str(self.root), "--permissions", "elradfmwMT"],
                       input=PASSWORD + "\n", text=True,
                       check=True, capture_output=True, timeout=30)
        self.users_file.chmod(0o644)
        self.proc: subprocess.Popen[bytes] | None = None

    # --- life cycle

    def __enter__(self) -> LabFtpd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = self.lab.popen(
                "srv", [sys.executable, "-m", "ftpd", "serve", "-c", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT)
        self.wait_log(r"ready: \d+ workers serving")

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.kill(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(5)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- observing

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 20.0, count: int = 1) -> str:
        return wait_for_log(self.log, self.proc, pattern, timeout, count)

    def workers(self) -> list[psutil.Process]:
        assert self.proc is not None
        return psutil.Process(self.proc.pid).children()

    def url(self, host: str, path: str = "") -> str:
        return f"ftp://alice:{PASSWORD}@{host}:{self.control_port}/{path}"


def curl(lab: Lab, host: str, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """curl in `host`, verbose (the FTP dialogue is in stderr), bounded in time."""
    return lab.run(host, "curl", "-sS", "-v", "--max-time", "10", "--connect-timeout", "4",
                   *args, url, timeout=20)


def lftp(lab: Lab, host: str, url: str, commands: str) -> subprocess.CompletedProcess[str]:
    """lftp in `host` running `commands` (its debug output, with the dialogue, in stderr).

    `-c` rather than `-e URL`: after a failed command the latter lingers until killed.
    """
    return lab.run(host, "timeout", "20", "lftp", "-d", "-c",
                   f"{LFTP_SETTINGS}open {url}; {commands}", timeout=25, input="")


class Conversation:
    """A step-by-step FTP session from a lab host (see ftp_driver.py)."""

    def __init__(self, lab: Lab, host: str) -> None:
        self.proc = lab.popen(host, [sys.executable, "-I", DRIVER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the FTP driver died during {op}")
        result: dict[str, Any] = json.loads(line)
        return result

    def open(self, host: str, port: int) -> str:
        reply: str = self.request("open", host=host, port=port, user="alice",
                                  password=PASSWORD)["reply"]
        assert reply.startswith("230"), reply
        return reply

    def send(self, line: str, timeout: float = 10.0) -> str:
        reply: str = self.request("send", line=line, timeout=timeout)["reply"]
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> Conversation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def passive_port(reply: str) -> int:
    """The port of a 227 or 229 reply."""
    if reply.startswith("229"):
        match = re.search(r"\|\|\|(\d+)\|", reply)
        assert match, reply
        return int(match.group(1))
    numbers = re.search(r"\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)", reply)
    assert numbers, reply
    return int(numbers.group(5)) * 256 + int(numbers.group(6))


def pasv_address(reply: str) -> str:
    numbers = re.search(r"\((\d+),(\d+),(\d+),(\d+),\d+,\d+\)", reply)
    assert numbers, reply
    return ".".join(numbers.groups())


def port_argument(ip: str, port: int) -> str:
    return ",".join([*ip.split("."), str(port // 256), str(port % 256)])


def stats_totals(log: str) -> collections.Counter[str]:
    """Sum of every counter over all data_channel_stats events in a daemon log."""
    totals: collections.Counter[str] = collections.Counter()
    for line in log.splitlines():
        if "event=data_channel_stats " in line:
            for key, value in re.findall(r" ([a-z0-9_]+)=(\d+)\b", line):
                if key not in ("worker", "interval"):
                    totals[key] += int(value)
    return totals

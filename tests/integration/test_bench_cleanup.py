"""bench/run against the real ftpd: interrupted mid-workload it stops the server by PID
and removes its user, home and work files; pointed anywhere but loopback it refuses."""

from __future__ import annotations

import glob
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
FTPD = str(Path(sys.executable).with_name("ftpd"))

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bench/run needs root")


def bench(*args: str, **kwargs) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(REPO / "bench" / "run"), "--ftpd", FTPD, *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "BENCH_PYTHON": sys.executable}, start_new_session=True, **kwargs)


def leftovers() -> list[str]:
    found = glob.glob("/var/tmp/ftpbench-home-*") + glob.glob("/tmp/ftpbench-run-*")
    try:
        found.append(f"user {pwd.getpwnam('ftpbench').pw_name}")
    except KeyError:
        pass
    return found


def read_until(proc: subprocess.Popen[str], marker: str, limit: float = 120) -> str:
    """The run's log up to the first line containing `marker`."""
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + limit
    for line in proc.stdout:
        lines.append(line)
        if marker in line or time.monotonic() > deadline:
            break
    return "".join(lines)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_cleans_up(tmp_path, signum):
    assert not leftovers(), "a bench run is already in progress or left files behind"
    proc = bench("--quick", "--servers", "ftpd", "--workloads", "sessions",
                 "--out", str(tmp_path / "out"))
    try:
        output = read_until(proc, "ftpd: sessions")
        assert "ftpd: sessions" in output, output
        servers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "serve" in p.cmdline()]
        assert servers, output
        server_tree = servers + servers[0].children()
        time.sleep(0.5)  # mid-workload
        os.kill(proc.pid, signum)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # the test failed before the signal: still clean up
            os.kill(proc.pid, signal.SIGTERM)
            proc.communicate(timeout=60)
    assert proc.returncode == 130, output + rest
    assert f"interrupted by {signal.Signals(signum).name}; cleaning up" in rest
    # The server and its workers are gone, and so is everything the run made.
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                             for p in server_tree), what="the benchmarked server stopped")
    assert not leftovers()
    assert not (tmp_path / "out" / "RESULTS.md").exists()


def test_refuses_anything_but_loopback(tmp_path):
    for host, why in (("192.0.2.1", "loopback"), ("10.0.0.1", "loopback"),
                      ("2001:db8::1", "loopback"), ("example.invalid", "does not resolve")):
        proc = bench("--quick", "--servers", "ftpd", "--host", host, "--out", str(tmp_path))
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert why in out, out
        assert not leftovers()

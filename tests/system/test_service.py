"""ftpd.service under a real systemd: readiness, status, reload, watchdog, stop,
socket activation and configuration errors.

Each test starts from the state the `ftpd` fixture restores (installed,
stopped, default configuration, user alice). Clients run inside the container
against 127.0.0.1:21 (see ftpclient.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from .conftest import FTP_ROOT, Ftpd, wait_for

pytestmark = pytest.mark.system

BROKEN = '[server]\nworkers = "plenty"\n'  # not a number nor "auto"


def sha256_inside(ftpd: Ftpd, path: str) -> str:
    return ftpd.container.run("sha256sum", path).stdout.split()[0]


def children_of(ftpd: Ftpd, pid: int) -> set[int]:
    out = ftpd.container.run("ps", "-o", "pid=", "--ppid", str(pid), check=False).stdout
    return {int(x) for x in out.split()}


def test_start_returns_when_ready(ftpd: Ftpd) -> None:
    """Type=notify: once `systemctl start` returns, connections are served."""
    started = time.monotonic()
    ftpd.start()
    seconds = time.monotonic() - started
    banner = ftpd.client("banner")
    assert banner["event"] == "done", banner
    assert banner["banner"].startswith("220")
    assert ftpd.state() == "active"
    assert ftpd.container.show("ftpd.service", "SubState") == "running"
    assert ftpd.status_text(), "READY=1 came without STATUS="
    assert seconds < 10


def test_ftp_session(ftpd: Ftpd) -> None:
    ftpd.start()
    user, password = ftpd.login_args()
    up = ftpd.client("upload", user, password, "session.bin", "1000000")
    assert up["event"] == "done", up
    assert up["reply"].startswith("226")
    down = ftpd.client("download", user, password, "session.bin")
    assert down["event"] == "done", down
    assert down["sha256"] == up["sha256"] == sha256_inside(ftpd, f"{FTP_ROOT}/session.bin")
    # Workers write as the ftpd user; uploads get [uploads] umask (022), not
    # the unit's UMask=0027.
    owner_mode = ftpd.container.run("stat", "-c", "%U %a", f"{FTP_ROOT}/session.bin").stdout
    assert owner_mode.split() == ["ftpd", "644"]


def test_status_text_counts_sessions(ftpd: Ftpd) -> None:
    ftpd.start()
    holder = ftpd.client_bg("hold", *ftpd.login_args())
    holder.expect("ready")
    wait_for(lambda: re.search(r"\b1 sessions?\b", ftpd.status_text()) is not None,
             timeout=15, what="StatusText to show 1 session")
    assert holder.close() == 0
    wait_for(lambda: re.search(r"\b0 sessions\b", ftpd.status_text()) is not None,
             timeout=15, what="StatusText to show 0 sessions")


def test_reload_during_transfer(ftpd: Ftpd) -> None:
    ftpd.start()
    main_pid = ftpd.main_pid()
    # 2 MB at 1 MB/s: the reload lands in the middle of the upload.
    upload = ftpd.client_bg("upload", *ftpd.login_args(), "reload.bin", "2000000", "1000000")
    upload.expect("started")
    time.sleep(0.5)
    ftpd.container.systemctl("reload", "ftpd.service", timeout=30)
    assert ftpd.main_pid() == main_pid
    assert ftpd.state() == "active"
    done = upload.expect("done", timeout=30)
    assert done["reply"].startswith("226")
    assert done["sha256"] == sha256_inside(ftpd, f"{FTP_ROOT}/reload.bin")
    assert ftpd.client("login", *ftpd.login_args())["event"] == "done"
    assert ftpd.main_pid() == main_pid
    assert ftpd.container.show("ftpd.service", "NRestarts") == "0"


def test_reload_with_broken_config_keeps_running(ftpd: Ftpd) -> None:
    ftpd.start()
    main_pid = ftpd.main_pid()
    path = ftpd.config("50-broken", BROKEN)
    # systemctl reload: ExecReload= runs `ftpd check` first and fails.
    result = ftpd.container.systemctl("reload", "ftpd.service", check=False, timeout=30)
    assert result.returncode != 0
    assert ftpd.state() == "active"
    assert ftpd.main_pid() == main_pid
    assert "workers" in ftpd.journal("-u", "ftpd.service")
    # A bare SIGHUP (kill -HUP, or an older unit): ftpd itself must refuse the
    # new configuration, keep serving with the old one and say why.
    since = ftpd.container.run("date", "+@%s.%N").stdout.strip()
    ftpd.container.systemctl("kill", "--signal=HUP", "--kill-whom=main", "ftpd.service")

    def daemon_complained() -> bool:
        log = ftpd.container.journal(f"--since={since}", "-u", "ftpd.service")
        return f"ftpd[{main_pid}]" in log and ("workers" in log or path in log)

    wait_for(daemon_complained, timeout=10, what="ftpd to log the configuration error")
    assert ftpd.state() == "active"
    assert ftpd.main_pid() == main_pid
    assert ftpd.client("login", *ftpd.login_args())["event"] == "done"


def test_journal_fields_per_user(ftpd: Ftpd) -> None:
    """`journalctl FTP_USER=alice` finds her login and upload."""
    ftpd.start()
    assert ftpd.client("upload", *ftpd.login_args(), "journal.bin", "1000")["event"] == "done"

    def events() -> set[str]:
        out = ftpd.journal("FTP_USER=alice", "-o", "json")
        found = set()
        for line in out.splitlines():
            entry = json.loads(line)
            name = entry.get("FTP_EVENT")
            message = entry.get("MESSAGE", "")
            match = re.search(r"\bevent=(\w+)", message if isinstance(message, str) else "")
            found.add(str(name) if name else match.group(1) if match else "")
        return found

    wait_for(lambda: {"login", "upload"} <= events(), timeout=5,
             what="login and upload entries with FTP_USER=alice")


def test_watchdog_restarts_hung_master(ftpd: Ftpd) -> None:
    # A short watchdog to keep the test quick; no core dump from SIGABRT.
    ftpd.drop_in("[Service]\nWatchdogSec=2\nTimeoutAbortSec=5\nLimitCORE=0\nRestartSec=0.2\n")
    ftpd.start()
    old_pid = ftpd.main_pid()
    ftpd.container.run("kill", "-STOP", str(old_pid))
    wait_for(lambda: ftpd.main_pid() not in (0, old_pid) and ftpd.state() == "active",
             timeout=20, what="systemd to replace the hung master")
    assert int(ftpd.container.show("ftpd.service", "NRestarts")) >= 1
    assert "Watchdog timeout" in ftpd.journal("-u", "ftpd.service")
    # No worker of the old master survives: every process left is the new
    # master or its child.
    new_pid = ftpd.main_pid()
    cgroup = ftpd.container.show("ftpd.service", "ControlGroup")
    procs = ftpd.container.run("cat", f"/sys/fs/cgroup{cgroup}/cgroup.procs").stdout.split()
    assert {int(p) for p in procs} <= {new_pid} | children_of(ftpd, new_pid)
    assert ftpd.client("login", *ftpd.login_args())["event"] == "done"


def test_stop_lets_transfer_finish(ftpd: Ftpd) -> None:
    ftpd.start()
    user, password = ftpd.login_args()
    assert ftpd.client("upload", user, password, "stop.bin", "3000000")["event"] == "done"
    download = ftpd.client_bg("download", user, password, "stop.bin", "1000000")
    download.expect("started")
    started = time.monotonic()
    stop = ftpd.container.popen("systemctl", "stop", "ftpd.service")
    done = download.expect("done", timeout=40)
    finished = time.monotonic()
    assert done["sha256"] == sha256_inside(ftpd, f"{FTP_ROOT}/stop.bin")
    assert done["reply"].startswith("226")
    try:
        assert stop.wait(40) == 0
    except subprocess.TimeoutExpired:
        stop.kill()
        raise
    stopped = time.monotonic()
    # The stop waited for the transfer, not for TimeoutStopSec.
    assert finished - started > 1.0
    assert stopped - finished < 10
    assert ftpd.state() == "inactive"
    assert ftpd.container.show("ftpd.service", "Result") == "success"
    assert "SIGKILL" not in ftpd.journal("-u", "ftpd.service")


def test_socket_activation(ftpd: Ftpd) -> None:
    ftpd.container.systemctl("enable", "--now", "ftpd.socket")
    assert ftpd.state() == "inactive"
    banner = ftpd.client("banner", timeout=10)
    assert banner["event"] == "done", banner
    assert banner["banner"].startswith("220")
    wait_for(lambda: ftpd.state() == "active", timeout=10, what="ftpd.service to start")
    main_pid = ftpd.main_pid()
    # Accept=no: the same daemon serves the next connections, data included
    # (the socket is dual-stack [::]:21, the client comes over IPv4).
    up = ftpd.client("upload", *ftpd.login_args(), "activated.bin", "100000")
    assert up["event"] == "done", up
    assert up["sha256"] == sha256_inside(ftpd, f"{FTP_ROOT}/activated.bin")
    assert ftpd.main_pid() == main_pid
    assert ftpd.container.show("ftpd.service", "NRestarts") == "0"
    listeners = ftpd.container.run("ss", "-Hltnp", "sport = :21").stdout
    assert f"pid={main_pid}," in listeners, listeners


def test_config_error_at_start_fails_once(ftpd: Ftpd) -> None:
    ftpd.config("50-broken", BROKEN)
    started = time.monotonic()
    result = ftpd.container.systemctl("start", "ftpd.service", check=False, timeout=30)
    assert result.returncode != 0
    assert time.monotonic() - started < 10
    assert ftpd.state() == "failed"
    assert ftpd.container.show("ftpd.service", "ExecMainStatus") == "78"
    time.sleep(3)  # longer than RestartSec=2: a restart would have happened
    assert ftpd.state() == "failed"
    assert ftpd.container.show("ftpd.service", "NRestarts") == "0"
    status = ftpd.container.systemctl("status", "ftpd.service", "-n", "20", check=False).stdout
    assert "workers" in status, status


def test_logrotate_signals_master_only(ftpd: Ftpd) -> None:
    ftpd.start()
    main_pid = ftpd.main_pid()
    workers = children_of(ftpd, main_pid)
    assert workers
    ftpd.container.sh("echo line > /var/log/ftpd/test.log")
    result = ftpd.container.run("logrotate", "-f", "/etc/logrotate.d/ftpd", check=False)
    assert result.returncode == 0, result.stderr
    assert ftpd.container.run("test", "-e", "/var/log/ftpd/test.log.1", check=False).returncode == 0
    time.sleep(1)
    assert ftpd.state() == "active"
    assert ftpd.main_pid() == main_pid
    assert children_of(ftpd, main_pid) == workers


def test_system_account_with_documented_drop_in(ftpd: Ftpd) -> None:
    """packaging/README.md: serving home directories takes ProtectHome=no and
    ReadWritePaths=/home in a drop-in; a PAM login then writes as the user."""
    c = ftpd.container
    c.sh("id bob >/dev/null 2>&1 || useradd --create-home --shell /bin/bash bob")
    c.run("chpasswd", input="bob:bobs password\n")
    ftpd.config("50-system", '[users]\nsystem = true\nisolation = "process"\n')
    ftpd.drop_in("[Service]\nProtectHome=no\nReadWritePaths=/home\n")
    ftpd.start()
    up = ftpd.client("upload", "bob", "bobs password", "bob.bin", "10000")
    assert up["event"] == "done", up
    owner = c.run("stat", "-c", "%U", "/home/bob/bob.bin").stdout.strip()
    assert owner == "bob"
    wrong = ftpd.client("badlogin", "bob", "not it", "1")
    assert wrong == {"event": "done", "failures": 1}

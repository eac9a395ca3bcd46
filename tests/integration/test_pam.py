"""`[users] system = true`: system accounts through PAM, jailed as themselves.

Each test creates its accounts (useradd, chpasswd) and its own PAM service
file (the shipped etc/pam.d/ftpd under a unique name) and removes both
afterwards, whatever the outcome.
"""

from __future__ import annotations

import ftplib
import io
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.integration.test_isolation import session_pid, supplementary_groups

SHIPPED = Path(__file__).resolve().parents[2] / "etc" / "pam.d" / "ftpd"
ACCOUNT_PASSWORD = "Pam-t3st-" + secrets.token_hex(4)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates accounts and PAM files")


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: Path


@pytest.fixture
def accounts(tmp_path: Path) -> Iterator[object]:
    """Factory: accounts(groups=()) -> a new system account with ACCOUNT_PASSWORD."""
    created: list[str] = []

    def make(groups: tuple[str, ...] = ()) -> Account:
        name = f"ftpdt{secrets.token_hex(4)}"
        home = tmp_path / name
        extra = ["--groups", ",".join(groups)] if groups else []
        created.append(name)  # before useradd: a half-made account is removed too
        subprocess.run(["useradd", "--create-home", "--home-dir", str(home), "--shell",
                        "/bin/bash", "--user-group", *extra, name], check=True,
                       capture_output=True)
        subprocess.run(["chpasswd"], input=f"{name}:{ACCOUNT_PASSWORD}\n", text=True,
                       check=True, capture_output=True)
        entry = subprocess.run(["getent", "passwd", name], capture_output=True, text=True,
                               check=True).stdout.split(":")
        return Account(name, int(entry[2]), int(entry[3]), home)

    try:
        yield make
    finally:
        for name in created:
            subprocess.run(["userdel", "--force", name], capture_output=True)
        left = [n for n in created
                if subprocess.run(["getent", "passwd", n], capture_output=True).returncode == 0]
        assert not left, f"test accounts not removed: {left}"


def install_service(lines: str = "") -> Path:
    path = Path("/etc/pam.d") / f"ftpd-test-{secrets.token_hex(4)}"
    path.write_text(lines + SHIPPED.read_text())
    return path


@pytest.fixture
def service() -> Iterator[str]:
    path = install_service()
    try:
        yield path.name
    finally:
        path.unlink(missing_ok=True)


def start(make_daemon, service: str, **users: object):
    """One worker (everybody shares it), system accounts on, nobody's deny list by default."""
    users.setdefault("deny_file", "/nonexistent/ftpusers")  # a missing file denies nobody
    return make_daemon(workers=1, server={"user": "nobody", "group": "nogroup"},
                       users={"system": True, "isolation": "process", "pam_service": service,
                              **users})


def login(daemon, name: str, password: str = ACCOUNT_PASSWORD) -> ftplib.FTP:
    return daemon.ftp(name, password)


def refused(daemon, name: str, password: str = ACCOUNT_PASSWORD) -> str:
    with pytest.raises(ftplib.error_perm, match=r"^530") as err:
        login(daemon, name, password)
    return str(err.value)


def test_system_account_is_jailed_as_itself(make_daemon, accounts, service):
    account = accounts(groups=("users",))
    daemon = start(make_daemon, service)
    client = login(daemon, account.name)
    pid = session_pid(daemon, client)
    process = psutil.Process(pid)
    assert os.readlink(f"/proc/{pid}/root") == os.path.realpath(account.home)
    assert tuple(process.uids()) == (account.uid,) * 3
    assert tuple(process.gids()) == (account.gid,) * 3
    expected = sorted(set(os.getgrouplist(account.name, account.gid)))
    assert supplementary_groups(pid) == expected and len(expected) == 2
    client.voidcmd("TYPE I")
    client.storbinary("STOR mine.txt", io.BytesIO(b"mine"))
    assert (account.home / "mine.txt").stat().st_uid == account.uid
    out = io.BytesIO()
    client.retrbinary("RETR mine.txt", out.write)
    assert out.getvalue() == b"mine"
    lines: list[str] = []
    client.retrlines("LIST", lines.append)
    assert any(account.name in line and "mine.txt" in line for line in lines), lines
    with pytest.raises(ftplib.error_perm):
        client.retrbinary("RETR /etc/shadow", out.write)
    client.quit()
    # Virtual users are still served beside system accounts.
    alice = daemon.ftp()
    alice_pid = session_pid(daemon, alice)
    assert os.readlink(f"/proc/{alice_pid}/root") == os.path.realpath(daemon.root)
    alice.quit()


def test_wrong_password_is_refused_after_a_delay(make_daemon, accounts, service):
    account = accounts()
    daemon = start(make_daemon, service)
    started = time.monotonic()
    refused(daemon, account.name, "not-the-password")
    assert time.monotonic() - started >= 2.0  # the delay is applied (without a thread)
    assert "auth: Authentication failure" in daemon.log()
    assert "event=login_failed" in daemon.log()


def test_locked_account_is_refused(make_daemon, accounts, service):
    account = accounts()
    subprocess.run(["usermod", "--lock", account.name], check=True)
    daemon = start(make_daemon, service)
    refused(daemon, account.name)


def test_expired_account_is_refused(make_daemon, accounts, service):
    account = accounts()
    subprocess.run(["chage", "--expiredate", "0", account.name], check=True)
    daemon = start(make_daemon, service)
    refused(daemon, account.name)
    # The password was right: pam_acct_mgmt refused the account.
    assert f"system login of '{account.name}' refused: account:" in daemon.log()


def test_account_in_the_deny_file_is_refused(make_daemon, accounts, service, tmp_path):
    listed, other = accounts(), accounts()
    deny = tmp_path / "ftpusers"
    deny.write_text(f"# no FTP for these\nroot\n{listed.name}  # a comment\n")
    daemon = start(make_daemon, service, deny_file=str(deny))
    refused(daemon, listed.name)
    assert f"system login of '{listed.name}' refused: listed in {deny}" in daemon.log()
    login(daemon, other.name).quit()
    deny.write_text(f"{other.name}\n")  # re-read when it changes
    refused(daemon, other.name)


def test_root_is_always_refused(make_daemon, service):
    daemon = start(make_daemon, service, deny_file="")
    refused(daemon, "root", "anything")
    assert "system login of 'root' refused: root may never log in" in daemon.log()


def test_slow_pam_does_not_stall_other_sessions(make_daemon, accounts):
    account = accounts()
    slow = install_service("auth optional pam_exec.so quiet /bin/sleep 2\n")
    try:
        daemon = start(make_daemon, slow.name)  # one worker for everybody
        waiting = socket.create_connection(("127.0.0.1", daemon.port), timeout=20)
        stream = waiting.makefile("rb")
        assert stream.readline().startswith(b"220")
        waiting.sendall(f"USER {account.name}\r\n".encode())
        assert stream.readline().startswith(b"331")
        started = time.monotonic()
        waiting.sendall(b"PASS wrong-password\r\n")  # PAM sleeps 2 s in a thread
        # Meanwhile the same worker greets, answers NOOP (before login, so the
        # worker itself answers) and logs a virtual user in.
        other = ftplib.FTP()
        other.connect("127.0.0.1", daemon.port, timeout=10)
        slowest = 0.0
        while time.monotonic() - started < 1.5:
            before = time.monotonic()
            other.voidcmd("NOOP")
            slowest = max(slowest, time.monotonic() - before)
            time.sleep(0.1)
        before = time.monotonic()
        daemon.ftp().quit()  # alice: the offload pool is not exhausted either
        slowest = max(slowest, time.monotonic() - before)
        reply = stream.readline()
        elapsed = time.monotonic() - started
        assert reply.startswith(b"530"), reply
        assert elapsed >= 2.0  # PAM was slow indeed...
        assert slowest < 1.0, slowest  # ...and the worker answered the others meanwhile
        other.quit()
        waiting.close()
    finally:
        slow.unlink(missing_ok=True)


def test_check_requires_process_isolation_for_system_accounts(make_daemon):
    daemon = make_daemon(start=False, users={"system": True})
    result = subprocess.run([sys.executable, "-m", "ftpd", "check", "-c",
                             str(daemon.config_path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert 'users.system = true needs isolation = "process"' in result.stderr

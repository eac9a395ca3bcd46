"""Process isolation without a daemon: configuration rules, path rebasing and
the jail itself (entered in a forked child, checked from here)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from ftpd import config as config_mod
from ftpd.isolation import _rebase, worker_account
from ftpd.privileges import Account, enter_jail


def load(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "ftpd.toml"
    path.write_text('[passive]\nports = "50000-50099"\n' + text)
    try:
        config_mod.load(str(path))
    except config_mod.ConfigError as err:
        return [str(p) for p in err.problems]
    return []


def test_system_accounts_need_process_isolation(tmp_path: Path):
    problems = load(tmp_path, "[users]\nsystem = true\n")
    assert len(problems) == 1
    assert 'users.isolation: users.system = true needs isolation = "process"' in problems[0]
    assert load(tmp_path, '[server]\nuser = "ftpd"\n[users]\nsystem = true\n'
                          'isolation = "process"\n') == []


def test_process_isolation_refuses_root_as_server_user(tmp_path: Path):
    (problem,) = load(tmp_path, '[server]\nuser = "root"\n[users]\nisolation = "process"\n')
    assert "server.user" in problem and "root can leave a chroot" in problem
    assert load(tmp_path, '[server]\nuser = "root"\n') == []  # shared: a warning elsewhere


def test_settings_are_validated(tmp_path: Path):
    assert "isolation" in load(tmp_path, '[users]\nisolation = "vm"\n')[0]
    assert "system_permissions" in load(tmp_path, '[users]\nsystem_permissions = "rwx"\n')[0]
    assert "deny_file" in load(tmp_path, '[users]\ndeny_file = "ftpusers"\n')[0]
    assert "pam_service" in load(tmp_path, '[users]\npam_service = "../shadow"\n')[0]


def test_workers_keep_root_only_in_process_mode():
    account = Account("ftpd", 101, 101)

    class Users:
        isolation = "process"

    class Config:
        users = Users()

    assert worker_account(Config(), account) is None
    Users.isolation = "shared"
    assert worker_account(Config(), account) is account


def test_rebase():
    assert _rebase("/srv/anon/incoming", "/srv/anon") == "/incoming"
    assert _rebase("/srv/anon", "/srv/anon") == "/"
    assert _rebase("", "/srv/anon") == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_enter_jail_for_good(tmp_path: Path):
    (tmp_path / "inside.txt").write_text("in")
    tmp_path.chmod(0o755)  # the jail's "/" must be searchable by its user
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports (root, uid, euid, gid, groups, could regain) and exits
        status = 1
        try:
            os.close(reader)
            enter_jail(str(tmp_path), 65534, 65534, [65534, 100])
            inside = os.path.exists("/inside.txt")
            try:
                os.setuid(0)
                regained = 1
            except PermissionError:
                regained = 0
            groups = sorted(os.getgroups())
            os.write(writer, struct.pack("6i", inside, os.getuid(), os.geteuid(),
                                         os.getgid(), groups[0] * 1000 + groups[1], regained))
            status = 0
        finally:
            os._exit(status)
    os.close(writer)
    data = os.read(reader, 64)
    os.close(reader)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    inside, uid, euid, gid, groups, regained = struct.unpack("6i", data)
    assert inside == 1  # its "/" is tmp_path
    assert (uid, euid, gid) == (65534, 65534, 65534)
    assert groups == 100 * 1000 + 65534
    assert regained == 0


def test_enter_jail_refuses_uid_0(tmp_path: Path):
    with pytest.raises(RuntimeError, match="uid 0"):
        enter_jail(str(tmp_path), 0, 0, [0])


def test_pinned_journal_socket_survives_its_path(tmp_path: Path):
    """A session process connects the journal socket before chroot(2); after
    it, the path no longer resolves (here: it is gone) but records still arrive."""
    import logging
    import socket

    from ftpd.logsinks import JournalHandler

    path = tmp_path / "journal.socket"
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(path))
    handler = JournalHandler(str(path))
    handler.pin()
    path.unlink()
    handler.emit(logging.LogRecord("ftpd", logging.INFO, __file__, 1, "from the jail", None,
                                   None))
    journal.settimeout(5)
    assert b"MESSAGE=from the jail" in journal.recv(65536)
    handler.close()
    journal.close()

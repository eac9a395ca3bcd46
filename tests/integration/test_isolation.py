"""`[users] isolation = "process"`: each logged-in session in its own jailed process.

Virtual users' sessions run as [server] user (here nobody:nogroup) chrooted
to their root; the worker keeps serving everyone else. The process is
checked from outside (/proc, psutil); escapes are tried from inside.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import re
import signal
import socket
import time

import psutil
import pytest

from tests.conftest import wait_for
from tests.integration.escapes import SECRET, build_escape_tree
from tests.integration.tlskit import ftps, make_ca, tls_section

NOBODY, NOGROUP = 65534, 65534
PROCESS = {"server": {"user": "nobody", "group": "nogroup"},
           "users": {"isolation": "process"}}


def session_pid(daemon, client) -> int:
    """The pid that logged `client` in (its login event); for isolation, the jail's."""
    port = client.sock.getsockname()[1]
    pattern = rf"ftpd\[(\d+)\] INFO login of .* remote_port={port} "
    return int(re.search(pattern, daemon.wait_log(pattern)).group(1))


def supplementary_groups(pid: int) -> list[int]:
    with open(f"/proc/{pid}/status") as f:
        line = next(x for x in f if x.startswith("Groups:"))
    return sorted(int(g) for g in line.split()[1:])


def make_jailed(make_daemon, **sections):
    settings = {key: dict(value) for key, value in PROCESS.items()}
    for key, value in sections.items():
        settings.setdefault(key, {}).update(value)
    daemon = make_daemon(workers=1, start=False, **settings)
    outside = build_escape_tree(daemon, "sub/ok.txt")
    root = daemon.root
    for path in (root, root / "sub", root / "sub" / "ok.txt"):
        os.lchown(path, NOBODY, NOGROUP)  # the jail is writable by its user
    return daemon.start(), outside


@pytest.fixture
def jailed(make_daemon):
    daemon, outside = make_jailed(make_daemon)
    yield daemon, outside
    assert (outside / "secret.txt").read_bytes() == SECRET
    assert sorted(os.listdir(outside)) == ["secret.txt"]


def test_session_process_is_chrooted_and_unprivileged(jailed):
    daemon, _ = jailed
    client = daemon.ftp()
    pid = session_pid(daemon, client)
    (worker,) = daemon.workers()
    process = psutil.Process(pid)
    assert process.ppid() == worker.pid  # a child of the worker, not the worker itself
    assert os.readlink(f"/proc/{pid}/root") == os.path.realpath(daemon.root)
    assert os.readlink(f"/proc/{pid}/cwd") == os.path.realpath(daemon.root)
    assert tuple(process.uids()) == (NOBODY,) * 3
    assert tuple(process.gids()) == (NOGROUP,) * 3
    assert supplementary_groups(pid) == [NOGROUP]
    assert worker.uids().effective == 0  # the worker keeps root to jail the next one
    # Nothing of the worker is left in the session process: no listener, no
    # other session, not the worker's epoll set.
    listening = [c for c in process.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    assert listening == []
    assert client.pwd() == "/"
    client.quit()
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
             what="the session process to exit")


def test_transfers_and_listings_inside_the_jail(jailed):
    daemon, _ = jailed
    client = daemon.ftp()
    client.voidcmd("TYPE I")
    payload = os.urandom(300_000)
    client.storbinary("STOR up.bin", io.BytesIO(payload))
    out = io.BytesIO()
    client.retrbinary("RETR up.bin", out.write)
    assert out.getvalue() == payload
    assert (daemon.root / "up.bin").read_bytes() == payload
    assert (daemon.root / "up.bin").stat().st_uid == NOBODY  # written as the user
    lines: list[str] = []
    client.retrlines("LIST", lines.append)
    text = "\n".join(lines)
    assert "up.bin" in text and "nobody" in text and "nogroup" in text
    facts: list[str] = []
    client.retrlines("MLSD", facts.append)
    assert any(f.endswith("; up.bin") for f in facts)
    client.voidcmd("TYPE I")
    assert client.size("up.bin") == len(payload)
    assert client.sendcmd("MDTM up.bin").startswith("213")
    client.storbinary("STOR ../../clamped.txt", io.BytesIO(b"c"))  # `..` stops at the top
    assert (daemon.root / "clamped.txt").read_bytes() == b"c"
    client.mkd("made")
    client.rename("up.bin", "made/moved.bin")
    client.sendcmd("SITE CHMOD 600 made/moved.bin")
    assert (daemon.root / "made" / "moved.bin").stat().st_mode & 0o777 == 0o600
    client.delete("made/moved.bin")
    client.rmd("made")
    out = io.BytesIO()
    client.retrbinary("RETR inside_link", out.write)
    assert out.getvalue() == b"ok"
    client.cwd("sub")
    assert client.pwd() == "/sub"
    client.cwd("..")
    client.cwd("..")  # at the top already
    assert client.pwd() == "/"
    client.quit()
    log = daemon.wait_log(r"event=disconnect .*user=alice")
    assert "isolation=process" in log


@pytest.mark.parametrize("name", [
    "../outside/secret.txt", "/../outside/secret.txt", "../../../../etc/passwd", "/etc/passwd",
    "link_dir/secret.txt", "link_file", "rel_up/secret.txt", "sub/../../outside/secret.txt",
    "/proc/self/root/etc/passwd",
])
def test_reads_outside_the_jail_are_refused(jailed, name):
    daemon, outside = jailed
    client = daemon.ftp()
    for target in (name, str(outside / "secret.txt")):
        with pytest.raises(ftplib.error_perm, match=r"^55"):
            client.retrbinary(f"RETR {target}", io.BytesIO().write)
    client.quit()


@pytest.mark.parametrize("command", ["STOR link_dir/new", "STOR link_file", "APPE link_file",
                                     "STOR rel_up/new", "STOU link_dir/x",
                                     "STOR ../outside/new", "STOR /proc/self/cwd/new"])
def test_writes_outside_the_jail_are_refused(jailed, command):
    daemon, outside = jailed
    client = daemon.ftp()
    with pytest.raises((ftplib.error_perm, ftplib.error_temp), match=r"^[45]5"):
        client.storbinary(command, io.BytesIO(b"pwned"))
    for attempt in (lambda: client.mkd("link_dir/x"), lambda: client.cwd("link_dir"),
                    lambda: client.size("link_file"), lambda: client.cwd(str(outside))):
        with pytest.raises(ftplib.error_perm, match=r"^55"):
            attempt()
    lines: list[str] = []
    client.retrlines("LIST", lines.append)
    assert "12345" not in "\n".join(lines)  # a dangling link in the jail, not the secret
    client.quit()
    assert not (daemon.tmp / "new").exists()


def test_the_worker_keeps_serving_while_sessions_are_isolated(jailed):
    daemon, _ = jailed
    (daemon.root / "big.bin").write_bytes(os.urandom(8 << 20))
    os.chown(daemon.root / "big.bin", NOBODY, NOGROUP)
    first = daemon.ftp()
    first.voidcmd("TYPE I")
    download = first.transfercmd("RETR big.bin")  # in flight, read slowly below
    digest = hashlib.sha256(download.recv(65536))
    started = time.monotonic()
    others = [daemon.ftp() for _ in range(3)]  # each logs in through the worker
    assert time.monotonic() - started < 10
    pids = {session_pid(daemon, c) for c in [first, *others]}
    assert len(pids) == 4 and daemon.workers()[0].pid not in pids
    for client in others:
        assert "big.bin" in client.nlst()
    while chunk := download.recv(1 << 20):
        digest.update(chunk)
    download.close()
    assert first.voidresp().startswith("226")
    assert digest.hexdigest() == hashlib.sha256((daemon.root / "big.bin").read_bytes()).hexdigest()
    for client in [first, *others]:
        client.quit()


def test_the_session_counts_until_its_process_is_reaped(make_daemon):
    daemon, _ = make_jailed(make_daemon, server={"max_sessions_per_user": 1})
    first = daemon.ftp()
    with pytest.raises(ftplib.error_temp, match="421 Too many sessions for this user"):
        daemon.ftp()
    first.quit()
    # The worker releases the claim when it reaps the session process.
    client = wait_for(lambda: _try_login(daemon), what="the released user slot")
    client.quit()


def _try_login(daemon):
    try:
        return daemon.ftp()
    except ftplib.error_temp:
        return None


def test_sigterm_stops_session_processes_and_exits_zero(jailed):
    daemon, _ = jailed
    (daemon.root / "big.bin").write_bytes(os.urandom(4 << 20))
    os.chown(daemon.root / "big.bin", NOBODY, NOGROUP)
    idle = daemon.ftp()
    busy = daemon.ftp()
    busy.voidcmd("TYPE I")
    download = busy.transfercmd("RETR big.bin")
    download.recv(65536)
    tree = psutil.Process(daemon.proc.pid).children(recursive=True)
    assert len(tree) == 3  # the worker and two session processes
    daemon.signal(signal.SIGTERM)
    with pytest.raises(ftplib.error_temp, match="421"):
        idle.getresp()  # an idle session is closed at once
    received = 65536
    while chunk := download.recv(1 << 20):  # the running transfer finishes
        received += len(chunk)
    download.close()
    assert received == 4 << 20
    assert busy.voidresp().startswith("226")
    assert daemon.proc.wait(20) == 0
    assert not [p for p in tree if p.is_running() and p.status() != "zombie"]
    assert "killing" not in daemon.log()


def test_shutdown_timeout_ends_a_stalled_isolated_transfer(make_daemon):
    daemon, _ = make_jailed(make_daemon, server={"shutdown_timeout": 2})
    (daemon.root / "big.bin").write_bytes(os.urandom(32 << 20))
    client = daemon.ftp()
    client.voidcmd("TYPE I")
    download = client.transfercmd("RETR big.bin")  # never read: the transfer stalls
    tree = psutil.Process(daemon.proc.pid).children(recursive=True)
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0
    assert time.monotonic() - started < 2 + 5  # deadline, then the child's own exit
    assert not [p for p in tree if p.is_running() and p.status() != "zombie"]
    download.close()
    client.close()


def test_idle_timer_and_log_files_carry_on_in_the_jail(make_daemon, tmp_path):
    events, xferlog = tmp_path / "events.json", tmp_path / "xferlog"
    daemon, _ = make_jailed(make_daemon, server={"idle_timeout": 2},
                            log={"json": str(events), "xferlog": str(xferlog)})
    client = daemon.ftp()
    pid = session_pid(daemon, client)
    client.retrbinary("RETR sub/ok.txt", io.BytesIO().write)
    with pytest.raises(ftplib.error_temp, match="421"):
        client.getresp()  # the idle timer runs on the session process's own loop
    wait_for(lambda: f'"PID": "{pid}"' in events.read_text() and "sub/ok.txt" in
             xferlog.read_text(), what="the jailed process's events in the log files")
    assert '"FTP_EVENT": "download"' in events.read_text()


def test_reload_lets_isolated_sessions_finish(jailed):
    daemon, _ = jailed
    client = daemon.ftp()
    pid = session_pid(daemon, client)
    (old_worker,) = daemon.workers()
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"reload done")
    assert client.sendcmd("NOOP").startswith("200")  # retiring: served until it quits
    newer = daemon.ftp()
    assert session_pid(daemon, newer) != pid
    assert old_worker.is_running()  # it waits for its session process
    client.quit()
    wait_for(lambda: not old_worker.is_running() or old_worker.status() == "zombie",
             what="the retired worker to exit after its last session")
    newer.quit()


def test_a_session_process_ends_with_its_worker(jailed):
    daemon, _ = jailed
    client = daemon.ftp()
    pid = session_pid(daemon, client)
    (worker,) = daemon.workers()
    worker.kill()
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
             what="the orphaned session process to exit")
    with pytest.raises((ftplib.error_temp, EOFError, OSError)):
        client.voidcmd("NOOP")  # it said 421 and closed
    replacement = wait_for(lambda: daemon.ftp(), what="a replacement worker")
    replacement.quit()


def test_tls_state_carries_over_into_the_session_process(make_daemon, tmp_path):
    ca = make_ca(tmp_path / "ca")
    daemon, _ = make_jailed(make_daemon, tls=tls_section(ca))
    client = ftps(daemon, ca)
    pid = session_pid(daemon, client)
    assert os.readlink(f"/proc/{pid}/root") == os.path.realpath(daemon.root)
    payload = os.urandom(200_000)
    client.storbinary("STOR tls.bin", io.BytesIO(payload))
    out = io.BytesIO()
    client.retrbinary("RETR tls.bin", out.write)
    assert out.getvalue() == payload
    client.quit()
    log = daemon.wait_log(rf"ftpd\[{pid}\] INFO session closed .*data_tls_reused=2")
    assert "data_tls_new=0" in log


def test_jail_needs_an_unprivileged_server_user(make_daemon):
    daemon = make_daemon(start=False, users={"isolation": "process"})  # server.user = root
    daemon.expect_failure = True
    daemon.start(wait=False)
    assert daemon.proc.wait(20) == 78
    assert "server.user" in daemon.log() and "root can leave a chroot" in daemon.log()


def test_plain_socket_not_used_by_the_worker_after_hand_over(jailed):
    """The worker closed its descriptor without a FIN: the client still talks."""
    daemon, _ = jailed
    client = daemon.ftp()
    (worker,) = daemon.workers()
    port = client.sock.getsockname()[1]
    held = [c for c in worker.net_connections("tcp") if c.raddr and c.raddr.port == port]
    assert held == []
    assert client.sendcmd("NOOP").startswith("200")
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
    assert sock.recv(100).startswith(b"220")  # and the worker still accepts
    sock.close()
    client.quit()


def test_data_from_port_20_in_a_session_process(make_daemon):
    """The jailed session cannot bind L-1 itself: it forks its own helper before the chroot."""
    port = next(p for p in range(700, 1000) if _free(p) and _free(p - 1))
    settings = {key: dict(value) for key, value in PROCESS.items()}
    settings["server"]["listen"] = [f"127.0.0.1:{port}"]
    daemon = make_daemon(workers=1, start=False, active={"connect_from_port_20": True},
                         **settings)
    daemon.port = port
    (daemon.root / "f.txt").write_bytes(b"data")
    daemon.start()
    client = daemon.ftp()
    client.voidcmd("TYPE I")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        target = listener.getsockname()[1]
        client.sendcmd(f"PORT 127,0,0,1,{target // 256},{target % 256}")
        client.putcmd("RETR f.txt")
        conn, peer = listener.accept()
        assert peer[1] == port - 1  # privileged, from the unprivileged session process
        assert conn.recv(100) == b"data"
        conn.close()
    assert client.getresp().startswith("125") and client.voidresp().startswith("226")
    client.quit()


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True

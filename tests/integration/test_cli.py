"""`ftpd check`, `ftpd passwd`, `ftpd --version` and start-up failures."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import psutil

from ftpd import __version__
from tests.conftest import PASSWORD, add_user, free_port


def ftpd(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ftpd", *args], input=stdin, text=True,
                          capture_output=True, timeout=60)


def setup(tmp_path: Path, extra: str = "") -> Path:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    users = tmp_path / "users.toml"
    if not users.exists():
        add_user(users, "alice", root)
    cfg = tmp_path / "ftpd.toml"
    cfg.write_text(f'[server]\nlisten = ["127.0.0.1:{free_port()}"]\nworkers = 1\n'
                   f'user = "root"\n[users]\nfile = "{users}"\n{extra}')
    return cfg


def test_version():
    result = ftpd("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"ftpd {__version__}"


def test_check_accepts_a_valid_config(tmp_path):
    result = ftpd("check", "-c", str(setup(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout


def test_check_uses_ftpd_config_env(tmp_path):
    cfg = setup(tmp_path)
    result = subprocess.run([sys.executable, "-m", "ftpd", "check"], capture_output=True,
                            text=True, env={"FTPD_CONFIG": str(cfg), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and str(cfg) in result.stdout


def test_check_reports_every_error_naming_file_and_key(tmp_path):
    cfg = setup(tmp_path, '[passive]\nports = "6000-5000"\nbogus = 1\n[log]\nlevel = 3\n')
    result = ftpd("check", "-c", str(cfg))
    assert result.returncode == 1
    err = result.stderr
    assert f"{cfg}: passive.ports:" in err and "reversed" in err
    assert f"{cfg}: passive.bogus: unknown key" in err
    assert f"{cfg}: log.level:" in err
    assert "3 error(s)" in err


def test_check_reports_missing_users_file(tmp_path):
    cfg = tmp_path / "ftpd.toml"
    cfg.write_text(f'[users]\nfile = "{tmp_path / "absent.toml"}"\n')
    result = ftpd("check", "-c", str(cfg))
    assert result.returncode == 1
    assert "absent.toml: users file not found" in result.stderr


def test_check_reports_unreadable_or_missing_root(tmp_path):
    cfg = setup(tmp_path)
    (tmp_path / "root").rmdir()
    result = ftpd("check", "-c", str(cfg))
    assert result.returncode == 1 and "users.alice.root" in result.stderr


def test_passwd_rules(tmp_path):
    users = tmp_path / "u.toml"
    assert ftpd("passwd", "-f", str(users), "bob", stdin="pw\n").returncode == 2  # no --root
    bad = ftpd("passwd", "-f", str(users), "bob", "--root", str(tmp_path), "--permissions", "rwZ",
               stdin="pw\n")
    assert bad.returncode == 2 and "unknown permission letters 'Z'" in bad.stderr
    assert ftpd("passwd", "-f", str(users), "b b", "--root", "/", stdin="pw\n").returncode == 2
    assert ftpd("passwd", "-f", str(users), "bob", "--root", str(tmp_path),
                stdin="\n").returncode == 2
    ok = ftpd("passwd", "-f", str(users), "bob", "--root", str(tmp_path), stdin="pw\n")
    assert ok.returncode == 0 and "created user 'bob'" in ok.stdout
    again = ftpd("passwd", "-f", str(users), "bob", stdin="pw2\n")
    assert again.returncode == 0 and "updated" in again.stdout
    assert "pw2" not in users.read_text()


def _serve(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ftpd", "serve", "-c", str(cfg)], text=True,
                          capture_output=True, timeout=30)


def test_serve_with_invalid_config_exits_78_naming_the_key(tmp_path):
    cfg = setup(tmp_path)
    cfg.write_text(cfg.read_text().replace("workers = 1", 'workers = "lots"'))
    result = _serve(cfg)
    assert result.returncode == 78
    assert "server.workers" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_port_in_use_exits_without_starting_workers(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    cfg = setup(tmp_path)
    text = cfg.read_text()
    busy_first = f'listen = ["127.0.0.1:{port}", "127.0.0.1:'
    cfg.write_text(text.replace('listen = ["127.0.0.1:', busy_first))
    before = {p.pid for p in psutil.process_iter()}
    result = _serve(cfg)
    busy.close()
    assert result.returncode == 1
    assert f"server.listen: 127.0.0.1:{port} is already in use" in result.stderr
    assert "starting" not in result.stderr
    leftovers = []
    for proc in psutil.process_iter():
        try:
            if proc.pid not in before and str(cfg) in proc.cmdline():
                leftovers.append(proc)
        except psutil.Error:
            pass
    assert not leftovers


def test_serve_with_unknown_worker_account(tmp_path):
    cfg = setup(tmp_path)
    cfg.write_text(cfg.read_text().replace('user = "root"', 'user = "no-such-user-ftpd"'))
    result = _serve(cfg)
    assert result.returncode == 78 and "server.user: no such user" in result.stderr


def test_passwd_password_from_stdin_logs_in(make_daemon):
    daemon = make_daemon()
    client = daemon.ftp("alice", PASSWORD)
    client.quit()

"""Per-user overrides, anonymous access and upload safety."""

from __future__ import annotations

import ftplib
import io
import os
import stat
import time
import tomllib
from pathlib import Path

import pytest

from ftpd import users as users_mod


def set_user_keys(users_file: Path, name: str, **keys: object) -> None:
    data = tomllib.loads(users_file.read_text())
    data["users"][name].update(keys)
    users_file.write_text(users_mod._render(data["users"]))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_default_umask_and_per_user_umask(make_daemon):
    daemon = make_daemon(start=False)
    from tests.conftest import add_user
    add_user(daemon.users_file, "carol", daemon.root)
    set_user_keys(daemon.users_file, "carol", umask="027")
    daemon.start()
    client = daemon.ftp()
    client.storbinary("STOR a.txt", io.BytesIO(b"a"))
    client.mkd("dir_a")
    client.quit()
    assert mode_of(daemon.root / "a.txt") == 0o644
    assert mode_of(daemon.root / "dir_a") == 0o755
    client = daemon.ftp("carol")
    client.storbinary("STOR c.txt", io.BytesIO(b"c"))
    client.mkd("dir_c")
    client.quit()
    assert mode_of(daemon.root / "c.txt") == 0o640
    assert mode_of(daemon.root / "dir_c") == 0o750


def test_uploads_umask_setting(make_daemon):
    daemon = make_daemon(uploads={"umask": "077"})
    client = daemon.ftp()
    client.storbinary("STOR p.txt", io.BytesIO(b"p"))
    client.quit()
    assert mode_of(daemon.root / "p.txt") == 0o600


def test_download_rate_limit_slows_transfers(make_daemon):
    daemon = make_daemon(start=False)
    set_user_keys(daemon.users_file, "alice", download_rate=200_000)
    daemon.start()
    (daemon.root / "f.bin").write_bytes(os.urandom(600_000))
    client = daemon.ftp()
    started = time.monotonic()
    out = io.BytesIO()
    client.retrbinary("RETR f.bin", out.write)
    elapsed = time.monotonic() - started
    client.quit()
    assert len(out.getvalue()) == 600_000
    assert elapsed >= 1.5, elapsed  # 600 kB at 200 kB/s; unthrottled it takes milliseconds


def test_per_user_session_limit_overrides_the_default(make_daemon):
    daemon = make_daemon(start=False)
    set_user_keys(daemon.users_file, "alice", max_sessions=1)
    daemon.start()
    first = daemon.ftp()
    with pytest.raises(ftplib.error_temp, match="421"):
        daemon.ftp()
    first.quit()


def test_invalid_overrides_are_named_by_check(make_daemon):
    import subprocess
    import sys

    daemon = make_daemon(start=False)
    set_user_keys(daemon.users_file, "alice", umask="999", upload_rate=-1, max_sessions="x")
    result = subprocess.run([sys.executable, "-m", "ftpd", "check", "-c",
                             str(daemon.config_path)], capture_output=True, text=True)
    assert result.returncode == 1
    for key in ("users.alice.umask", "users.alice.upload_rate", "users.alice.max_sessions"):
        assert key in result.stderr


@pytest.fixture
def anon(make_daemon, tmp_path):
    root = tmp_path / "anon"
    (root / "incoming").mkdir(parents=True)
    (root / "pub.txt").write_text("public\n")
    daemon = make_daemon(anonymous={"enabled": True, "root": str(root),
                                    "upload_dir": "incoming"})
    client = ftplib.FTP()
    client.connect("127.0.0.1", daemon.port, timeout=15)
    client.login("anonymous", "guest@example.org")
    yield root, client
    client.close()


def test_anonymous_reads_and_uploads_only_to_upload_dir(anon):
    root, client = anon
    out = io.BytesIO()
    client.retrbinary("RETR pub.txt", out.write)
    assert out.getvalue() == b"public\n"
    with pytest.raises(ftplib.error_perm, match="550"):
        client.storbinary("STOR top.txt", io.BytesIO(b"x"))
    client.storbinary("STOR incoming/new.txt", io.BytesIO(b"new"))
    assert (root / "incoming" / "new.txt").read_bytes() == b"new"
    with pytest.raises(ftplib.error_perm, match="550"):
        client.storbinary("STOR incoming/new.txt", io.BytesIO(b"overwrite"))
    assert (root / "incoming" / "new.txt").read_bytes() == b"new"
    for command in ("DELE pub.txt", "MKD incoming/d", "RNFR pub.txt"):
        with pytest.raises(ftplib.error_perm, match="550"):
            client.sendcmd(command)


def test_anonymous_is_off_by_default(daemon):
    client = ftplib.FTP()
    client.connect("127.0.0.1", daemon.port, timeout=15)
    with pytest.raises(ftplib.error_perm, match="530"):
        client.login("anonymous", "guest@example.org")
    client.close()


def test_anonymous_upload_dir_outside_root_is_a_config_error(tmp_path):
    import subprocess
    import sys

    from tests.conftest import add_user
    (tmp_path / "anon").mkdir()
    add_user(tmp_path / "u.toml", "alice", tmp_path)
    cfg = tmp_path / "ftpd.toml"
    cfg.write_text(f'[users]\nfile = "{tmp_path / "u.toml"}"\n[anonymous]\nenabled = true\n'
                   f'root = "{tmp_path / "anon"}"\nupload_dir = "../elsewhere"\n')
    result = subprocess.run([sys.executable, "-m", "ftpd", "check", "-c", str(cfg)],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "anonymous.upload_dir" in result.stderr


def test_atomic_upload_appears_only_when_complete(make_daemon):
    daemon = make_daemon(uploads={"atomic": True})
    client = daemon.ftp()
    client.voidcmd("TYPE I")
    conn = client.transfercmd("STOR big.bin")
    conn.sendall(b"x" * 100_000)
    deadline = time.monotonic() + 10
    while not any(p.name.startswith(".big.bin.ftpd-upload-") for p in daemon.root.iterdir()):
        assert time.monotonic() < deadline, "no temporary upload file appeared"
        time.sleep(0.05)
    assert not (daemon.root / "big.bin").exists()  # still under its temporary name
    conn.sendall(b"y" * 100_000)
    conn.close()
    assert client.voidresp().startswith("226")
    assert (daemon.root / "big.bin").read_bytes() == b"x" * 100_000 + b"y" * 100_000
    assert sorted(p.name for p in daemon.root.iterdir()) == ["big.bin"]
    log = daemon.wait_log(r"event=upload .*path=/big.bin")
    assert "ftpd-upload" not in log
    client.quit()


def test_atomic_upload_aborted_leaves_nothing(make_daemon):
    daemon = make_daemon(uploads={"atomic": True})
    (daemon.root / "keep.bin").write_bytes(b"old")
    client = daemon.ftp()
    client.voidcmd("TYPE I")
    conn = client.transfercmd("STOR keep.bin")
    conn.sendall(b"partial" * 1000)
    time.sleep(0.2)
    # (A clean close of the data connection means "end of file" in FTP; an
    # aborted upload is ABOR or a broken session.)
    client.putcmd("ABOR")
    conn.close()
    assert client.getmultiline().startswith(("426", "225", "226"))
    daemon.wait_log(r"event=upload .*completed=false")
    client.quit()
    assert (daemon.root / "keep.bin").read_bytes() == b"old"  # the old file is untouched
    assert sorted(p.name for p in daemon.root.iterdir()) == ["keep.bin"]


def test_atomic_store_over_outside_symlink_is_refused(make_daemon, tmp_path):
    daemon = make_daemon(uploads={"atomic": True})
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    (daemon.root / "link").symlink_to(outside)
    client = daemon.ftp()
    with pytest.raises(ftplib.error_perm, match="550"):
        client.storbinary("STOR link", io.BytesIO(b"pwned"))
    client.quit()
    assert outside.read_text() == "precious"

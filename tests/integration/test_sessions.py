"""Logins, transfers and file commands against the real daemon with real clients."""

from __future__ import annotations

import ftplib
import io
import os
import shutil
import socket
import subprocess

import pytest

from tests.conftest import PASSWORD


def test_login_ok_and_bad(daemon):
    client = daemon.ftp()
    assert client.getwelcome().startswith("220 ")
    client.quit()
    bad = ftplib.FTP()
    bad.connect("127.0.0.1", daemon.port, timeout=15)
    with pytest.raises(ftplib.error_perm, match="530"):
        bad.login("alice", "wrong-password")
    with pytest.raises(ftplib.error_perm, match="530"):
        bad.login("nobody-here", "x")
    bad.close()
    log = daemon.wait_log(r"event=login_failed .*user=nobody-here")
    assert "event=login session=" in log
    assert "event=login_failed" in log and "remote_addr=127.0.0.1" in log
    assert PASSWORD not in log and "wrong-password" not in log


def test_list_retr_stor_appe_rest(daemon):
    (daemon.root / "hello.txt").write_bytes(b"hello world\n")
    client = daemon.ftp()
    assert "hello.txt" in client.nlst()
    lines: list[str] = []
    client.retrlines("LIST", lines.append)
    assert any("hello.txt" in line for line in lines)
    out = io.BytesIO()
    client.retrbinary("RETR hello.txt", out.write)
    assert out.getvalue() == b"hello world\n"

    payload = os.urandom(300_000)
    client.storbinary("STOR up.bin", io.BytesIO(payload))
    assert (daemon.root / "up.bin").read_bytes() == payload
    client.storbinary("APPE up.bin", io.BytesIO(b"tail"))
    assert (daemon.root / "up.bin").read_bytes() == payload + b"tail"

    # REST: resume a download and an upload from an offset.
    out = io.BytesIO()
    client.retrbinary("RETR up.bin", out.write, rest=1000)
    assert out.getvalue() == (payload + b"tail")[1000:]
    (daemon.root / "part.bin").write_bytes(payload[:5000])
    client.voidcmd("TYPE I")
    client.storbinary("STOR part.bin", io.BytesIO(payload[5000:]), rest=5000)
    assert (daemon.root / "part.bin").read_bytes() == payload
    client.quit()
    log = daemon.wait_log(r"event=upload .*path=/part.bin")
    assert "event=download" in log and "bytes=12" in log


def test_directory_and_rename_commands(daemon):
    client = daemon.ftp()
    client.mkd("dir")
    client.storbinary("STOR dir/a", io.BytesIO(b"a"))
    client.rename("dir/a", "dir/b")
    assert client.nlst("dir") == ["dir/b"] or client.nlst("dir") == ["b"]
    client.delete("dir/b")
    client.rmd("dir")
    assert not (daemon.root / "dir").exists()
    with pytest.raises(ftplib.error_perm, match="550"):
        client.delete("does-not-exist")
    client.quit()
    log = daemon.wait_log(r"event=rmdir")
    for name in ("mkdir", "rename", "delete", "rmdir"):
        assert f"event={name}" in log


def test_read_only_user_cannot_write(make_daemon):
    from tests.conftest import add_user

    d = make_daemon(start=False)
    add_user(d.users_file, "reader", d.root, permissions="elr")
    d.start()
    client = d.ftp("reader")
    with pytest.raises(ftplib.error_perm, match="550"):
        client.storbinary("STOR x", io.BytesIO(b"x"))
    client.quit()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_download_upload_and_list(daemon, tmp_path):
    (daemon.root / "file.bin").write_bytes(os.urandom(100_000))
    url = f"ftp://alice:{PASSWORD}@127.0.0.1:{daemon.port}"
    got = tmp_path / "got.bin"
    subprocess.run(["curl", "-sS", "--max-time", "20", "-o", str(got), f"{url}/file.bin"],
                   check=True)
    assert got.read_bytes() == (daemon.root / "file.bin").read_bytes()
    subprocess.run(["curl", "-sS", "--max-time", "20", "-T", str(got), f"{url}/copy.bin"],
                   check=True)
    assert (daemon.root / "copy.bin").read_bytes() == got.read_bytes()
    listing = subprocess.run(["curl", "-sS", "--max-time", "20", "--disable-epsv", f"{url}/"],
                             check=True, capture_output=True, text=True).stdout
    assert "file.bin" in listing and "copy.bin" in listing


@pytest.mark.skipif(shutil.which("lftp") is None, reason="lftp not installed")
def test_lftp_mirror(daemon, tmp_path):
    (daemon.root / "tree" / "sub").mkdir(parents=True)
    (daemon.root / "tree" / "sub" / "f.txt").write_text("lftp\n")
    out = tmp_path / "mirror"
    script = (f"set net:max-retries 1; set net:timeout 10; set ftp:prefer-epsv no; "
              f"open -u alice,{PASSWORD} -p {daemon.port} 127.0.0.1; "
              f"mirror tree {out}; put {daemon.root / 'tree' / 'sub' / 'f.txt'} -o up.txt; bye")
    subprocess.run(["timeout", "30", "lftp", "-c", script], check=True, capture_output=True)
    assert (out / "sub" / "f.txt").read_text() == "lftp\n"
    assert (daemon.root / "up.txt").read_text() == "lftp\n"


def _raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert sock.recv(1024).startswith(b"220")
    return sock


def _ask(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line + b"\r\n")
    return sock.recv(4096)


def test_bad_input_gets_replies_and_disturbs_nobody(daemon):
    bystander = daemon.ftp()
    sock = _raw(daemon.port)
    assert _ask(sock, b"FOO bar").startswith(b"500")
    assert _ask(sock, b"USER \xff\xfe\xfd").startswith(b"331")
    assert _ask(sock, b"USER a\x00b").startswith(b"501")
    sock.sendall(b"A" * 5000 + b"\r\nNOOP\r\n")
    replies = b""
    while b"200 " not in replies:
        chunk = sock.recv(4096)
        assert chunk, "connection closed after an overlong line"
        replies += chunk
    assert replies.startswith(b"500 Command too long")
    sock.close()
    assert "200" in bystander.voidcmd("NOOP")
    bystander.quit()
    assert "Traceback" not in daemon.log()

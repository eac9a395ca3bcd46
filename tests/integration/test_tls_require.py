"""[tls] require = none | login | all, the per-user override and the RFC 4217 replies."""

from __future__ import annotations

import ftplib
import io
import re
import subprocess
import sys

import pytest

from tests.conftest import PASSWORD, add_user
from tests.integration.tlskit import client_context, curl, ftps, lftp, make_ca, tls_section


@pytest.fixture
def ca(tmp_path):
    return make_ca(tmp_path / "ca")


def set_user_tls(users_file, name: str, require: str) -> None:
    """Add `tls = { require = ... }` to a user's table, as an admin would."""
    text = users_file.read_text()
    header = f"[users.{name}]\n"
    assert header in text
    users_file.write_text(text.replace(header, f'{header}tls = {{ require = "{require}" }}\n'))


def plain_login(daemon, user: str = "alice") -> ftplib.FTP:
    return daemon.ftp(user)


@pytest.mark.parametrize("require", ["none", "login", "all"])
def test_require_levels_with_ftplib(make_daemon, ca, require):
    daemon = make_daemon(tls=tls_section(ca, require=require))
    (daemon.root / "f.txt").write_bytes(b"data\n")

    # Plain FTP: allowed only with "none"; otherwise 530 and a sentence saying what to do.
    if require == "none":
        plain_login(daemon).quit()
    else:
        with pytest.raises(ftplib.error_perm, match=r"^530 .*AUTH TLS"):
            plain_login(daemon)
        raw = ftplib.FTP()
        raw.connect("127.0.0.1", daemon.port, timeout=15)
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            raw.sendcmd("PASS " + PASSWORD)  # PASS without USER, still in the clear
        raw.close()

    # TLS login with a clear data connection (PROT C): refused with 521 only for "all".
    clear = ftps(daemon, ca, protect=False)
    if require == "all":
        with pytest.raises(ftplib.error_perm, match=r"^521 .*PROT P"):
            clear.nlst()
        with pytest.raises(ftplib.error_perm, match=r"^521"):
            clear.retrbinary("RETR f.txt", lambda _: None)
        assert clear.voidcmd("NOOP").startswith("200")  # the session carries on
    else:
        assert clear.nlst() == ["f.txt"]
    clear.prot_p()  # and with PROT P everything works at every level
    out = io.BytesIO()
    clear.retrbinary("RETR f.txt", out.write)
    assert out.getvalue() == b"data\n"
    clear.quit()

    log = daemon.log()
    assert ("event=tls_required" in log) == (require != "none")


def test_require_login_with_curl_and_lftp(make_daemon, ca):
    daemon = make_daemon(tls=tls_section(ca, require="login"))
    (daemon.root / "f.txt").write_bytes(b"curl\n")
    url = f"ftp://127.0.0.1:{daemon.port}/f.txt"
    plain = curl("-u", f"alice:{PASSWORD}", url)
    assert plain.returncode != 0  # 67: login denied
    assert b"530" in plain.stderr or plain.returncode == 67
    secure = curl("--ssl-reqd", "--cacert", str(ca.path), "-u", f"alice:{PASSWORD}", url)
    assert secure.returncode == 0, secure.stderr
    assert secure.stdout == b"curl\n"

    login = f"open -u alice,{PASSWORD} -p {daemon.port} 127.0.0.1; "
    refused = lftp("set ftp:ssl-allow false; " + login + "cat f.txt", timeout=5)
    assert refused.returncode != 0
    assert "530 Login refused: this server requires TLS" in refused.stderr
    ok = lftp(f"set ftp:ssl-force true; set ssl:ca-file {ca.path}; " + login + "cat f.txt")
    assert ok.returncode == 0, ok.stderr
    assert "curl" in ok.stdout


def test_require_all_with_lftp_clear_data_refused(make_daemon, ca):
    daemon = make_daemon(tls=tls_section(ca, require="all"))
    (daemon.root / "f.txt").write_bytes(b"x\n")
    login = f"open -u alice,{PASSWORD} -p {daemon.port} 127.0.0.1; "
    base = f"set ftp:ssl-force true; set ssl:ca-file {ca.path}; "
    refused = lftp(base + "set ftp:ssl-protect-data false; " + login + "cat f.txt", timeout=6)
    assert refused.returncode != 0
    assert "521" in refused.stderr
    ok = lftp(base + "set ftp:ssl-protect-data true; " + login + "cat f.txt")
    assert ok.returncode == 0, ok.stderr


def test_per_user_override(make_daemon, ca):
    daemon = make_daemon(start=False, tls=tls_section(ca, require="all"))
    add_user(daemon.users_file, "scanner", daemon.root, permissions="elr")
    add_user(daemon.users_file, "strict", daemon.root, permissions="elr")
    set_user_tls(daemon.users_file, "scanner", "none")  # a legacy device, plain allowed
    daemon.start()
    (daemon.root / "scan.txt").write_bytes(b"scan\n")

    legacy = plain_login(daemon, "scanner")
    assert legacy.nlst() == ["scan.txt"]  # clear control and data connections
    legacy.quit()
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        plain_login(daemon, "alice")

    # An override can also be stricter than the server: "login" keeps data in the clear
    # allowed for that user while the server says "all"... and the reverse.
    set_user_tls(daemon.users_file, "strict", "login")
    client = ftps(daemon, ca, user="strict", protect=False)
    assert client.nlst() == ["scan.txt"]
    client.quit()
    client = ftps(daemon, ca, user="alice", protect=False)
    with pytest.raises(ftplib.error_perm, match=r"^521"):
        client.nlst()
    client.quit()


def test_override_stricter_than_server(make_daemon, ca):
    daemon = make_daemon(start=False, tls=tls_section(ca))  # require = "none"
    add_user(daemon.users_file, "vault", daemon.root, permissions="elr")
    set_user_tls(daemon.users_file, "vault", "all")
    daemon.start()
    plain_login(daemon, "alice").quit()
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        plain_login(daemon, "vault")
    client = ftps(daemon, ca, user="vault", protect=False)
    with pytest.raises(ftplib.error_perm, match=r"^521"):
        client.nlst()
    client.prot_p()
    assert client.nlst() == []
    client.quit()


def test_users_file_tls_key_is_validated(make_daemon, ca):
    daemon = make_daemon(start=False, tls=tls_section(ca))
    add_user(daemon.users_file, "bob", daemon.root)
    set_user_tls(daemon.users_file, "bob", "sometimes")
    check = subprocess.run([sys.executable, "-m", "ftpd", "check", "-c", str(daemon.config_path)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 1
    assert re.search(r"users\.bob\.tls\.require: got 'sometimes', expected one of "
                     r'"none", "login", "all"', check.stderr), check.stderr

    text = daemon.users_file.read_text().replace('require = "sometimes"', 'level = "none"')
    daemon.users_file.write_text(text)
    check = subprocess.run([sys.executable, "-m", "ftpd", "check", "-c", str(daemon.config_path)],
                           capture_output=True, text=True, timeout=60)
    assert "users.bob.tls.level: unknown key; allowed: require" in check.stderr

    # `ftpd passwd` rewrites the file and must keep a valid override as a TOML table.
    set_user_tls(daemon.users_file, "alice", "login")
    daemon.users_file.write_text(daemon.users_file.read_text()
                                 .replace('tls = { level = "none" }\n', ""))
    add_user(daemon.users_file, "carol", daemon.root)
    assert 'tls = { require = "login" }' in daemon.users_file.read_text()
    check = subprocess.run([sys.executable, "-m", "ftpd", "check", "-c", str(daemon.config_path)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr


def test_tls_handshake_uses_the_verified_certificate(make_daemon, ca):
    daemon = make_daemon(tls=tls_section(ca, require="login"))
    ctx = client_context(ca)
    client = ftplib.FTP_TLS(context=ctx, timeout=15)
    client.connect("127.0.0.1", daemon.port)
    client.auth()  # verifies the chain against the test CA and the IP address
    assert client.sock.getpeercert()["subject"] == ((("commonName", "ftpd test server"),),)
    client.quit()

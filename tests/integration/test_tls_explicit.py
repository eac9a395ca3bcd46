"""Explicit FTPS (AUTH TLS, PBSZ, PROT) with real clients: ftplib, curl, lftp."""

from __future__ import annotations

import ftplib
import io
import os
import ssl

import pytest

from tests.conftest import PASSWORD
from tests.integration.tlskit import client_context, curl, ftps, lftp, make_ca, tls_section


@pytest.fixture
def ca(tmp_path):
    return make_ca(tmp_path / "ca")


def test_without_certificate_the_server_is_plain_ftp(daemon):
    client = daemon.ftp()
    features = client.sendcmd("FEAT")
    assert "AUTH" not in features and "PROT" not in features
    with pytest.raises(ftplib.error_perm, match="500"):
        client.sendcmd("AUTH TLS")
    client.quit()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_ftplib_over_tls(make_daemon, ca, version):
    daemon = make_daemon(tls=tls_section(ca))
    payload = os.urandom(700_000)
    client = ftps(daemon, ca, version=version)
    assert client.sock.version() == f"TLSv{version}"
    assert "AUTH TLS" in client.sendcmd("FEAT")
    client.storbinary("STOR up.bin", io.BytesIO(payload))
    out = io.BytesIO()
    client.retrbinary("RETR up.bin", out.write)
    assert out.getvalue() == payload
    assert client.nlst() == ["up.bin"]
    client.quit()
    log = daemon.wait_log(r"event=disconnect .*data_tls_reused=3")
    assert "event=tls session=" in log and f"tls_version=TLSv{version}" in log
    assert "tls_mode=explicit" in log and "tls_cipher=" in log
    assert "data_tls_new=0" in log


def test_curl_and_lftp(make_daemon, ca, tmp_path):
    daemon = make_daemon(tls=tls_section(ca))
    (daemon.root / "hello.txt").write_bytes(b"hello over tls\n")
    url = f"ftp://127.0.0.1:{daemon.port}/"
    auth = ["--cacert", str(ca.path), "-u", f"alice:{PASSWORD}"]

    for flags in (["--ssl-reqd"], ["--ssl-reqd", "--tlsv1.3"], ["--ssl-reqd", "--tls-max", "1.2"]):
        result = curl(*flags, *auth, url + "hello.txt")
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"hello over tls\n"

    upload = tmp_path / "up.txt"
    upload.write_bytes(os.urandom(200_000))
    result = curl("--ssl-reqd", *auth, "-T", str(upload), url + "curl.bin")
    assert result.returncode == 0, result.stderr
    assert (daemon.root / "curl.bin").read_bytes() == upload.read_bytes()
    listing = curl("--ssl-reqd", *auth, url)
    assert b"curl.bin" in listing.stdout

    # lftp (GnuTLS) never reads the TLS 1.3 session tickets the server sends on
    # an upload's data connection, so its kernel may reset the connection and
    # drop the tail (see test_tls_reuse.py): uploads over TLS 1.2, reads over 1.3.
    login = f"open -u alice,{PASSWORD} -p {daemon.port} 127.0.0.1; "
    common = f"set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:ca-file {ca.path}; "
    result = lftp(common + 'set ssl:priority "NORMAL:-VERS-TLS1.3"; ' + login
                  + f"put {upload} -o lftp.bin")
    assert result.returncode == 0, result.stderr
    assert (daemon.root / "lftp.bin").read_bytes() == upload.read_bytes()
    result = lftp(common + login + "cat hello.txt; ls")
    assert result.returncode == 0, result.stderr
    assert "hello over tls" in result.stdout and "lftp.bin" in result.stdout

    log = daemon.wait_log(r"event=disconnect .*tls_version=TLSv1.2")
    assert "event=tls_reuse_missing" not in log  # curl and lftp resume the session
    assert "tls_version=TLSv1.3" in log


def test_plain_ftp_still_served_when_tls_is_optional(make_daemon, ca):
    daemon = make_daemon(tls=tls_section(ca))  # require = "none" is the default
    client = daemon.ftp()
    assert "AUTH TLS" in client.sendcmd("FEAT")
    assert client.nlst() == []
    client.quit()


def test_min_version_and_ciphers(make_daemon, ca):
    daemon = make_daemon(tls=tls_section(ca, min_version="1.3"))
    with pytest.raises(ssl.SSLError):
        ftps(daemon, ca, version="1.2")
    result = curl("--ssl-reqd", "--tls-max", "1.2", "--cacert", str(ca.path),
                  "-u", f"alice:{PASSWORD}", f"ftp://127.0.0.1:{daemon.port}/")
    assert result.returncode != 0
    client = ftps(daemon, ca, version="1.3")
    assert client.sock.version() == "TLSv1.3"
    client.quit()

    other = make_daemon(tls=tls_section(ca, "chacha", ciphers="ECDHE+CHACHA20"))
    ctx = client_context(ca, "1.2")
    client = ftplib.FTP_TLS(context=ctx, timeout=15)
    client.connect("127.0.0.1", other.port)
    client.auth()
    assert "CHACHA20" in client.sock.cipher()[0]
    client.quit()

"""227 addresses per client network on a dual-stack listener, and `ftpd check`'s
NAT diagnosis, against the real daemon on loopback."""

from __future__ import annotations

import ftplib
import socket
import subprocess
import sys

import pytest


def _dual_stack(make_daemon, **sections):  # type: ignore[no-untyped-def]
    daemon = make_daemon(workers=1, start=False, **sections)
    daemon.write_config(server={"listen": [f"[::]:{daemon.port}"]}, **sections)
    return daemon.start()


def _ftp(host: str, port: int) -> ftplib.FTP:
    client = ftplib.FTP()
    client.connect(host, port, timeout=15)
    client.login("alice", "s3cret-Pa55")
    return client


def test_ipv4_client_on_a_dual_stack_listener(make_daemon):
    daemon = _dual_stack(make_daemon, passive={"address": "192.0.2.10"})
    client = _ftp("127.0.0.1", daemon.port)  # seen as ::ffff:127.0.0.1
    assert "(127,0,0,1," in client.sendcmd("PASV")  # loopback: local_direct
    assert client.sendcmd("EPSV").startswith("229")
    assert client.nlst() == []
    client.quit()


def test_address_map_matches_v4_mapped_clients(make_daemon):
    daemon = make_daemon(workers=1, start=False)
    daemon.write_config(server={"listen": [f"[::]:{daemon.port}"]},
                        passive={"address": "192.0.2.10"})
    with open(daemon.config_path, "a") as f:  # the fixture writes no arrays of tables
        f.write('[[passive.address_map]]\nnetworks = ["127.0.0.0/8"]\naddress = "192.0.2.20"\n')
    daemon.start()
    client = _ftp("127.0.0.1", daemon.port)
    assert "(192,0,2,20," in client.sendcmd("PASV")  # the map entry beats local_direct
    client.quit()


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_ipv6_client_uses_epsv_and_eprt(make_daemon):
    daemon = _dual_stack(make_daemon, passive={"address": "192.0.2.10"})
    client = _ftp("::1", daemon.port)
    with pytest.raises(ftplib.error_temp, match="425 PASV needs IPv4; use EPSV"):
        client.sendcmd("PASV")
    assert client.sendcmd("EPSV").startswith("229")
    assert client.nlst() == []  # ftplib uses EPSV over IPv6
    with pytest.raises(ftplib.error_perm, match="PORT is IPv4-only and this control "
                                                "connection is IPv6"):
        client.sendcmd("PORT 127,0,0,1,195,80")
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as listener:
        port = listener.getsockname()[1]
        assert client.sendcmd(f"EPRT |2|0:0:0:0:0:0:0:1|{port}|").startswith("200")
        listener.accept()[0].close()
    client.quit()


def test_ftpd_check_prints_the_diagnosis(make_daemon):
    daemon = make_daemon(workers=1, start=False, passive={"address": "10.9.8.7"})
    holder = socket.create_server(("127.0.0.1", daemon.passive.start))
    try:
        out = subprocess.run([sys.executable, "-m", "ftpd", "check", "-c",
                              str(daemon.config_path)], capture_output=True, text=True,
                             timeout=60)
    finally:
        holder.close()
    assert out.returncode == 0, out.stderr
    assert "warning: " in out.stderr
    assert "passive.address: 10.9.8.7 is not a public address" in out.stderr
    assert f"cannot be bound on 127.0.0.1: {daemon.passive.start} (in use)" in out.stderr

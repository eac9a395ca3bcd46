"""Active mode (PORT/EPRT) against the real daemon on loopback."""

from __future__ import annotations

import ftplib
import io
import socket
import time

import pytest


def _port_arg(ip: str, port: int) -> str:
    return ",".join([*ip.split("."), str(port // 256), str(port % 256)])


def test_port_and_eprt_transfers(make_daemon):
    daemon = make_daemon(log={"stats_interval": 1})
    (daemon.root / "f").write_bytes(b"a" * 5000)
    client = daemon.ftp()
    client.set_pasv(False)  # ftplib sends PORT
    out = io.BytesIO()
    client.retrbinary("RETR f", out.write)
    assert out.getvalue() == b"a" * 5000
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        assert client.sendcmd(f"EPRT |1|127.0.0.1|{port}|").startswith("200")
        conn, _ = listener.accept()
        conn.close()
    client.quit()
    daemon.wait_log(r"event=data_channel_stats .*port=1 eprt=1")


@pytest.mark.parametrize(("command", "reply"), [
    ("PORT 127,0,0,2,195,80", "501 Refused PORT to foreign address 127.0.0.2"),
    ("EPRT |1|127.0.0.2|50000|", "501 Refused EPRT to foreign address 127.0.0.2"),
    ("PORT 127,0,0,1,0,80", "501 Refused PORT to privileged port 80"),
    ("PORT 127,0,0,1,195", "501 PORT needs six comma-separated numbers"),
    ("EPRT |2|::1|50000|", "501 Refused EPRT to foreign address ::1"),
])
def test_refusals_say_why(make_daemon, command, reply):
    daemon = make_daemon(workers=1)
    client = daemon.ftp()
    with pytest.raises(ftplib.error_perm) as err:
        client.sendcmd(command)
    assert str(err.value).startswith(reply)
    assert client.voidcmd("NOOP").startswith("200")
    client.quit()


def test_foreign_addresses_allowed_for_fxp(make_daemon):
    daemon = make_daemon(workers=1, active={"allow_foreign_addresses": True})
    with socket.create_server(("127.0.0.2", 0)) as listener:  # another host, for the server
        client = daemon.ftp()
        port = listener.getsockname()[1]
        assert client.sendcmd(f"PORT {_port_arg('127.0.0.2', port)}").startswith("200")
        listener.accept()[0].close()
        with pytest.raises(ftplib.error_perm, match="privileged port 21"):
            client.sendcmd("PORT 127,0,0,2,0,21")  # never below 1024, FXP or not
        client.quit()


def test_refused_data_connection_gives_425_with_the_reason(make_daemon):
    daemon = make_daemon(workers=1)
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    client = daemon.ftp()
    with pytest.raises(ftplib.error_temp) as err:
        client.sendcmd(f"PORT {_port_arg('127.0.0.1', port)}")
    assert str(err.value).startswith(
        f"425 Can't open data connection to 127.0.0.1:{port}: Connection refused.")
    assert client.voidcmd("NOOP").startswith("200")
    client.quit()


def test_active_mode_disabled(make_daemon):
    daemon = make_daemon(workers=1, active={"enabled": False})
    client = daemon.ftp()
    for command in ("PORT 127,0,0,1,195,80", "EPRT |1|127.0.0.1|50000|"):
        with pytest.raises(ftplib.error_perm) as err:
            client.sendcmd(command)
        assert str(err.value).startswith(f"502 Active mode ({command[:4]}) is disabled on this "
                                         "server; use passive mode (PASV or EPSV).")
    assert client.nlst() == []  # passive still works
    client.quit()


def test_connect_from_port_minus_one_on_an_unprivileged_port(make_daemon):
    # Control port P: data from P-1 (>1024 here, so no privilege is involved).
    daemon = make_daemon(workers=1, active={"connect_from_port_20": True})
    client = daemon.ftp()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        for _ in range(2):  # the same source port again, to another client port
            assert client.sendcmd(f"PORT {_port_arg('127.0.0.1', port)}").startswith("200")
            conn, peer = listener.accept()
            assert peer[1] == daemon.port - 1
            conn.close()
            client.sendcmd("ABOR")
    client.quit()


def test_epsv_all(make_daemon):
    daemon = make_daemon(workers=1)
    client = daemon.ftp()
    assert client.sendcmd("EPSV ALL").startswith("200 EPSV ALL accepted")
    for command in ("PASV", "PORT 127,0,0,1,195,80", "EPRT |1|127.0.0.1|50000|"):
        with pytest.raises(ftplib.error_perm, match=f"501 {command[:4]} is not allowed after "
                                                    "EPSV ALL; use EPSV."):
            client.sendcmd(command)
    assert client.sendcmd("EPSV").startswith("229")
    assert "EPSV" in client.sendcmd("FEAT")  # always offered
    client.quit()


def test_passive_timeout_is_a_425_for_the_waiting_command(make_daemon):
    daemon = make_daemon(workers=1, passive={"connect_timeout": 1})
    client = daemon.ftp()
    client.sendcmd("PASV")
    client.putcmd("LIST")
    assert client.getresp().startswith("150")
    with pytest.raises(ftplib.error_temp) as err:
        client.getresp()
    assert "425 No data connection arrived on port" in str(err.value)
    assert "within 1 s" in str(err.value)
    assert client.voidcmd("NOOP").startswith("200")
    client.quit()


def test_session_after_active_transfer_is_idle_for_a_stop(make_daemon):
    # pyftpdlib keeps a finished PORT connector referenced; the session must still
    # count as idle, or a stop would wait the whole shutdown_timeout for it.
    daemon = make_daemon(workers=1, server={"shutdown_timeout": 30})
    (daemon.root / "f").write_bytes(b"x" * 100)
    client = daemon.ftp()
    client.set_pasv(False)
    client.retrbinary("RETR f", lambda _: None)
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    with pytest.raises(ftplib.error_temp, match="425"):  # a failed one, too
        client.sendcmd(f"PORT {_port_arg('127.0.0.1', port)}")
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 10
    with pytest.raises((ftplib.error_temp, EOFError, OSError)):
        client.voidcmd("NOOP")  # 421 on shutdown


def test_source_port_taken_gives_425_saying_so(make_daemon):
    daemon = make_daemon(workers=1, active={"connect_from_port_20": True})
    try:
        squatter = socket.create_server(("127.0.0.1", daemon.port - 1))
    except OSError:
        pytest.skip("the port below the control port is in use already")
    with squatter, socket.create_server(("127.0.0.1", 0)) as listener:
        client = daemon.ftp()
        port = listener.getsockname()[1]
        with pytest.raises(ftplib.error_temp) as err:
            client.sendcmd(f"PORT {_port_arg('127.0.0.1', port)}")
        assert str(err.value).startswith(
            f"425 Can't open data connection to 127.0.0.1:{port}: cannot use source port "
            f"{daemon.port - 1} (Address already in use).")
        client.quit()

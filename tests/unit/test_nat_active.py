"""PORT/EPRT parsing and bounce protection; the port-20 bind helper."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftpd.active import DataTarget, Refused, check_target, parse_eprt, parse_port
from ftpd.privileges import start_port_binder


def refusal(fn, *args) -> Refused:  # type: ignore[no-untyped-def]
    with pytest.raises(Refused) as err:
        fn(*args)
    return err.value


def test_good_port_and_eprt() -> None:
    assert parse_port("192,0,2,7,195,80") == DataTarget(ipaddress.ip_address("192.0.2.7"), 50000)
    assert parse_port(" 192, 0,2,7,195,80") .port == 50000
    assert parse_eprt("|1|192.0.2.7|50000|") == parse_port("192,0,2,7,195,80")
    assert parse_eprt("!2!2001:DB8::7!50000!").ip == "2001:db8::7"  # any delimiter, case
    assert parse_eprt("|2|::ffff:192.0.2.7|50000|").ip == "192.0.2.7"  # mapped = IPv4


@pytest.mark.parametrize(("arg", "reply"), [
    ("192,0,2,7,195", "501 PORT needs six comma-separated numbers h1,h2,h3,h4,p1,p2 (got 5)."),
    ("", "501 PORT needs six comma-separated numbers h1,h2,h3,h4,p1,p2 (got 0)."),
    ("192,0,2,7,195,80,1", "501 PORT needs six"),
    ("192,0,2,256,195,80", "501 PORT field 256 is out of range"),
    ("192,0,2,7,256,0", "501 PORT field 256 is out of range"),
    ("192,0,2,7,0,0", "501 PORT names port 0, which is not a valid data port."),
    ("192,0,2,-7,195,80", "501 PORT field '-7' is not a number."),
    ("192,0,2,\u0667,195,80", "501 PORT field '\u0667' is not a number."),  # Arabic-Indic 7
    ("2001:db8::7,195,80", "501 PORT carries only IPv4 addresses; for IPv6 use EPRT"),
])
def test_malformed_port(arg: str, reply: str) -> None:
    err = refusal(parse_port, arg)
    assert err.reply.startswith(reply) and err.reason == "malformed"


@pytest.mark.parametrize(("arg", "reply"), [
    ("|1|192.0.2.7|0|", "501 EPRT names port 0"),
    ("|1|192.0.2.7|65536|", "501 EPRT port 65536 is out of range (1-65535)."),
    ("|1|192.0.2.7|port|", "501 EPRT port 'port' is not a number."),
    ("|1|2001:db8::7|50000|", "501 EPRT address '2001:db8::7' is not a valid IPv4 address"),
    ("|2|192.0.2.7|50000|", "501 EPRT address '192.0.2.7' is not a valid IPv6 address"),
    ("|3|192.0.2.7|50000|", "522 Network protocol not supported, use (1,2)"),
    ("|1|192.0.2.7|50000", "501 EPRT needs three fields between delimiters"),
    ("|1|192.0.2.7|50000|x", "501 EPRT needs three fields between delimiters"),
    ("1192.0.2.71500001", "501 EPRT delimiter '1' is not allowed"),
    (" 1 192.0.2.7 50000 ", "501 EPRT delimiter ' ' is not allowed"),
])
def test_malformed_eprt(arg: str, reply: str) -> None:
    err = refusal(parse_eprt, arg)
    assert err.reply.startswith(reply) and err.reason == "malformed"


@given(st.text(max_size=60))
def test_parsers_only_ever_refuse(text: str) -> None:
    for parse in (parse_port, parse_eprt):
        try:
            target = parse(text)
        except Refused as err:
            assert err.reply[:3] in ("501", "522")
        else:
            assert 1 <= target.port <= 65535


def test_bounce_protection() -> None:
    target = parse_port("192,0,2,7,195,80")
    check_target("PORT", target, "192.0.2.7", allow_foreign=False)
    check_target("PORT", target, "::ffff:192.0.2.7", allow_foreign=False)
    err = refusal(check_target, "PORT", target, "198.51.100.1", False)
    assert err.reason == "foreign_address"
    assert err.reply == ("501 Refused PORT to foreign address 192.0.2.7: data connections go "
                         "only to your own address (198.51.100.1). Behind NAT, use passive "
                         "mode (PASV/EPSV) or enable your router's FTP helper.")
    check_target("PORT", target, "198.51.100.1", allow_foreign=True)
    low = parse_port("192,0,2,7,0,25")
    err = refusal(check_target, "PORT", low, "192.0.2.7", True)  # even with FXP allowed
    assert err.reason == "privileged_port" and "privileged port 25" in err.reply
    v6 = parse_eprt("|2|2001:db8::7|50000|")
    check_target("EPRT", v6, "2001:DB8:0::7", allow_foreign=False)  # same host, other spelling
    err = refusal(check_target, "PORT", target, "2001:db8::7", True)
    assert "PORT is IPv4-only and this control connection is IPv6" in err.reply


@pytest.mark.skipif(os.geteuid() != 0, reason="binding port 20 needs root")
def test_port_binder_binds_only_its_ports_and_exits_with_the_worker() -> None:
    binder = start_port_binder({20})
    try:
        first = binder.bind(socket.AF_INET, "127.0.0.1", 20)
        second = binder.bind(socket.AF_INET, "127.0.0.1", 20)  # shared: distinct 4-tuples
        assert first.getsockname() == second.getsockname() == ("127.0.0.1", 20)
        assert first.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        first.close()
        second.close()
        with pytest.raises(OSError) as err:
            binder.bind(socket.AF_INET, "127.0.0.1", 22)
        assert err.value.errno == errno.EPERM
        with pytest.raises(OSError) as err:
            binder.bind(socket.AF_INET, "not-an-ip", 20)
        assert err.value.errno == errno.EINVAL
        with pytest.raises(OSError) as err:
            binder.bind(socket.AF_INET, "192.0.2.254", 20)  # not ours: bind() says so
        assert err.value.errno == errno.EADDRNOTAVAIL
        # The helper holds nothing of its parent but its socket.
        fds = os.listdir(f"/proc/{binder.pid}/fd")
        assert sorted(int(fd) for fd in fds)[3:] == [max(int(fd) for fd in fds)]
    finally:
        binder.close()
    with pytest.raises(ChildProcessError):
        os.waitpid(binder.pid, os.WNOHANG)  # reaped by close()

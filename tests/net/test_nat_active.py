"""Active mode (PORT/EPRT) across the lab's NAT routers, with real clients.

cpc sits behind its own NAT router crtr: without the conntrack FTP helper its
PORT/EPRT carries a private address that is not the address the server sees.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil

from .ftplab import FILE_TEXT, Conversation, LabFtpd, curl, lftp, port_argument, stats_totals
from .lab import CLI_IP, CPC_IP, CRTR_WAN_IP, PUBLIC_IP, Lab

ACTIVE_CURL = ("--ftp-port", "-")  # PORT/EPRT with the control connection's local address
ACTIVE_LFTP = "set ftp:passive-mode off; "


def _settle(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)
    return check()


def test_active_from_behind_nat_without_helper_is_refused_as_foreign(lab: Lab) -> None:
    with LabFtpd(lab, passive={"address": PUBLIC_IP}) as ftpd:
        run = curl(lab, "cpc", ftpd.url(PUBLIC_IP, "f.txt"), *ACTIVE_CURL)
        assert run.returncode != 0 and run.stdout == ""
        assert (f"501 Refused EPRT to foreign address {CPC_IP}: data connections go only to "
                f"your own address ({CRTR_WAN_IP})") in run.stderr
        assert f"501 Refused PORT to foreign address {CPC_IP}" in run.stderr
        assert "Behind NAT, use passive mode (PASV/EPSV)" in run.stderr

        run = lftp(lab, "cpc", ftpd.url(PUBLIC_IP), ACTIVE_LFTP + "cat f.txt")
        assert f"501 Refused PORT to foreign address {CPC_IP}" in run.stderr
        assert "event=data_refused" in ftpd.log() and "reason=foreign_address" in ftpd.log()
        # Passive mode through the client's own NAT needs nothing.
        run = curl(lab, "cpc", ftpd.url(PUBLIC_IP, "f.txt"))
        assert (run.returncode, run.stdout) == (0, FILE_TEXT), run.stderr


def test_active_from_behind_nat_with_ct_ftp_helper_works(lab: Lab) -> None:
    lab.set_ct_ftp_helper("crtr", port=lab.control_port)
    with LabFtpd(lab, passive={"address": PUBLIC_IP}) as ftpd:
        run = curl(lab, "cpc", ftpd.url(PUBLIC_IP, "f.txt"), *ACTIVE_CURL)
        assert (run.returncode, run.stdout) == (0, FILE_TEXT), run.stderr
        run = lftp(lab, "cpc", ftpd.url(PUBLIC_IP), ACTIVE_LFTP + "cat f.txt")
        assert (run.returncode, run.stdout) == (0, FILE_TEXT), run.stderr
        assert "<--- 200 Active data connection established." in run.stderr
        # The server saw crtr's public address in PORT/EPRT: the helper rewrote it.
        assert "reason=foreign_address" not in ftpd.log()
        assert any(dport > 1023 for _, _, dport in lab.incoming_syns("cpc"))


def test_connect_from_port_20_through_an_unprivileged_worker(lab: Lab) -> None:
    # Workers drop to nobody: port 20 comes from the root bind helper.
    with LabFtpd(lab, user="nobody", passive={"address": PUBLIC_IP},
                 active={"connect_from_port_20": True}) as ftpd:
        [worker] = ftpd.workers()
        assert worker.uids().effective != 0
        [helper] = worker.children()
        assert helper.uids().effective == 0  # it only binds, see privileges.PortBinder

        run = curl(lab, "cli", ftpd.url(PUBLIC_IP, "f.txt"), *ACTIVE_CURL)
        assert (run.returncode, run.stdout) == (0, FILE_TEXT), run.stderr
        run = lftp(lab, "cli", ftpd.url(PUBLIC_IP), ACTIVE_LFTP + "cat f.txt")
        assert (run.returncode, run.stdout) == (0, FILE_TEXT), run.stderr
        from_20 = [syn for syn in lab.incoming_syns("cli") if syn[1] == 20]
        assert len(from_20) == 2, lab.incoming_syns("cli")  # on the wire, after rtr's NAT
        assert all(ip == PUBLIC_IP for ip, _, _ in from_20)

        # Two data connections from port 20 open at the same time (distinct 4-tuples).
        with Conversation(lab, "cli") as first, Conversation(lab, "cli") as second:
            ports = []
            for session in (first, second):
                session.open(PUBLIC_IP, ftpd.control_port)
                assert session.send("TYPE I").startswith("200")
                ports.append(session.request("listen")["port"])
                reply = session.send(f"PORT {port_argument(CLI_IP, ports[-1])}")
                assert reply.startswith("200 Active data connection established"), reply
                assert session.request("accept")["peer"] == [PUBLIC_IP, 20]
            for session in (first, second):
                assert session.send("RETR f.txt").startswith("125")
                assert session.request("data_read")["bytes"] == len(FILE_TEXT)
                assert session.request("reply")["reply"].startswith("226")
        assert {(PUBLIC_IP, 20, port) for port in ports} <= lab.incoming_syns("cli")
    assert not psutil.pid_exists(helper.pid) or helper.status() == psutil.STATUS_ZOMBIE


def test_active_mode_disabled_is_refused_with_a_hint(lab: Lab) -> None:
    with LabFtpd(lab, passive={"address": PUBLIC_IP}, active={"enabled": False}) as ftpd:
        run = curl(lab, "cli", ftpd.url(PUBLIC_IP, "f.txt"), *ACTIVE_CURL)
        assert run.returncode != 0
        assert ("502 Active mode (EPRT) is disabled on this server; use passive mode "
                "(PASV or EPSV).") in run.stderr
        run = lftp(lab, "cli", ftpd.url(PUBLIC_IP), ACTIVE_LFTP + "cat f.txt")
        assert "502 Active mode (PORT) is disabled on this server" in run.stderr
        run = curl(lab, "cli", ftpd.url(PUBLIC_IP, "f.txt"))  # passive still fine
        assert (run.returncode, run.stdout) == (0, FILE_TEXT), run.stderr


def test_active_connection_dropped_by_the_client_firewall_is_a_425(lab: Lab) -> None:
    # The classic "425 Can't open data connection": the client's firewall eats the SYN.
    with LabFtpd(lab, active={"connect_timeout": 1}, log={"stats_interval": 1}) as ftpd, \
            Conversation(lab, "cli") as session:
        session.open(PUBLIC_IP, ftpd.control_port)
        port = session.request("listen")["port"]
        rules = ("table ip clientfw {\n chain input {\n  type filter hook input priority "
                 f"filter; policy accept;\n  tcp dport {port} drop\n }}\n}}\n")
        lab.run("cli", "nft", "-f", "-", input=rules, check=True)
        try:
            reply = session.send(f"PORT {port_argument(CLI_IP, port)}")
            assert reply.startswith(f"425 Data connection to {CLI_IP}:{port} timed out after "
                                    "1 s: a firewall or NAT on your side drops it"), reply
            assert session.send("NOOP").startswith("200")
            session.send("QUIT")
        finally:
            lab.run("cli", "nft", "delete", "table", "ip", "clientfw")
        assert _settle(lambda: stats_totals(ftpd.log())["425_timeout"] == 1)

"""Passive mode through the lab's server-side NAT router (rtr), with real clients.

curl runs with `--disable-epsv --no-ftp-skip-pasv-ip` wherever the 227 address
matters (by default it ignores that address and would hide a bug), lftp with
`ftp:prefer-epsv no` (it trusts the 227 address).
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.integration.tlskit import make_ca, tls_section

from .ftplab import (
    FILE_TEXT,
    Conversation,
    LabFtpd,
    curl,
    lftp,
    passive_port,
    pasv_address,
)
from .lab import LAN_IP, PUBLIC_IP, SRV_IP, Lab

TRUST_227 = ("--disable-epsv", "--no-ftp-skip-pasv-ip")


def _ports_in_227(dialogue: str) -> list[int]:
    return [int(a) * 256 + int(b) for a, b in
            re.findall(r"227 Entering passive mode \(\d+,\d+,\d+,\d+,(\d+),(\d+)\)", dialogue)]


def test_passive_behind_nat_with_public_address(lab: Lab) -> None:
    with LabFtpd(lab, passive={"address": PUBLIC_IP}) as ftpd:
        pasv = curl(lab, "cli", ftpd.url(PUBLIC_IP, "f.txt"), *TRUST_227)
        assert (pasv.returncode, pasv.stdout) == (0, FILE_TEXT), pasv.stderr
        assert "227 Entering passive mode (10,200,1,1," in pasv.stderr
        epsv = curl(lab, "cli", ftpd.url(PUBLIC_IP, "f.txt"))
        assert (epsv.returncode, epsv.stdout) == (0, FILE_TEXT), epsv.stderr
        assert "229 Entering extended passive mode" in epsv.stderr

        trusting = lftp(lab, "cli", ftpd.url(PUBLIC_IP), "set ftp:prefer-epsv no; cat f.txt")
        assert (trusting.returncode, trusting.stdout) == (0, FILE_TEXT), trusting.stderr
        assert "227 Entering passive mode (10,200,1,1," in trusting.stderr
        extended = lftp(lab, "cli", ftpd.url(PUBLIC_IP), "set ftp:prefer-epsv yes; cat f.txt")
        assert (extended.returncode, extended.stdout) == (0, FILE_TEXT), extended.stderr
        assert "229 Entering extended passive mode" in extended.stderr


def test_without_address_pasv_fails_epsv_works_and_ftpd_warned(lab: Lab) -> None:
    with LabFtpd(lab) as ftpd:
        # The supervisor's self-diagnosis saw srv's only address is private.
        assert re.search(r"WARNING .*passive\.address is not set and this server's addresses "
                         rf"\({re.escape(SRV_IP)}\) are private", ftpd.log())
        dropped = lab.counter("rtr", "fwd_drop")

        pasv = curl(lab, "cli", ftpd.url(PUBLIC_IP, "f.txt"), *TRUST_227,
                    "--connect-timeout", "2")
        assert pasv.returncode != 0 and pasv.stdout == ""
        assert "227 Entering passive mode (10,200,2,2," in pasv.stderr  # srv's own address
        trusting = lftp(lab, "cli", ftpd.url(PUBLIC_IP),
                        "set net:timeout 2; set ftp:prefer-epsv no; cat f.txt")
        assert trusting.returncode != 0 and trusting.stdout == ""
        assert "227 Entering passive mode (10,200,2,2," in trusting.stderr
        # rtr dropped the data connections to the unroutable address.
        assert lab.counter("rtr", "fwd_drop") > dropped

        epsv = curl(lab, "cli", ftpd.url(PUBLIC_IP, "f.txt"))
        assert (epsv.returncode, epsv.stdout) == (0, FILE_TEXT), epsv.stderr
        extended = lftp(lab, "cli", ftpd.url(PUBLIC_IP), "set ftp:prefer-epsv yes; cat f.txt")
        assert (extended.returncode, extended.stdout) == (0, FILE_TEXT), extended.stderr


def test_only_the_passive_range_is_forwarded_and_every_transfer_works(lab: Lab) -> None:
    low, high = lab.passive_range
    with LabFtpd(lab, workers=2, passive={"address": PUBLIC_IP}) as ftpd:
        in_drop, fwd_drop = lab.counter("rtr", "in_drop"), lab.counter("rtr", "fwd_drop")
        seen: list[int] = []
        for i in range(20):  # separate sessions, so both workers' slices serve
            if i % 2:
                run = curl(lab, "cli", ftpd.url(PUBLIC_IP, "f.txt"), *TRUST_227)
            else:
                run = lftp(lab, "cli", ftpd.url(PUBLIC_IP), "set ftp:prefer-epsv no; cat f.txt")
            assert (run.returncode, run.stdout) == (0, FILE_TEXT), (i, run.stderr[-2000:])
            seen += _ports_in_227(run.stderr)
        assert len(seen) == 20
        assert all(low <= port <= high for port in seen), seen
        # Not a single packet to an unforwarded port.
        assert (lab.counter("rtr", "in_drop"), lab.counter("rtr", "fwd_drop")) == \
            (in_drop, fwd_drop)


def test_exhausted_range_gives_425_and_the_session_continues(lab: Lab) -> None:
    lab.set_rtr_forward(lab.control_port, (30000, 30000))
    with LabFtpd(lab, passive_range=(30000, 30000), passive={"address": PUBLIC_IP}) as ftpd, \
            Conversation(lab, "cli") as holder, Conversation(lab, "cli") as other:
        holder.open(PUBLIC_IP, ftpd.control_port)
        assert passive_port(holder.send("PASV")) == 30000  # the only port, now taken
        other.open(PUBLIC_IP, ftpd.control_port)
        for command in ("PASV", "EPSV"):
            reply = other.send(command)
            assert reply.startswith("425 No passive port free"), reply
        assert other.send("NOOP").startswith("200")  # the session carries on

        busy = curl(lab, "cli", ftpd.url(PUBLIC_IP, "f.txt"), *TRUST_227)
        assert busy.returncode != 0 and "425 No passive port free" in busy.stderr
        busy = lftp(lab, "cli", ftpd.url(PUBLIC_IP), "set ftp:prefer-epsv no; cat f.txt")
        assert busy.returncode != 0 and "425 No passive port free" in busy.stderr

        holder.send("QUIT")  # closes its listener: the port is back in the pool
        assert passive_port(other.send("PASV")) == 30000
        other.send("QUIT")
        ok = curl(lab, "cli", ftpd.url(PUBLIC_IP, "f.txt"), *TRUST_227)
        assert (ok.returncode, ok.stdout) == (0, FILE_TEXT), ok.stderr
        assert "event=passive_exhausted" in ftpd.log()


def _split_horizon_checks(lab: Lab, ftpd: LabFtpd) -> None:
    inside = curl(lab, "lan", ftpd.url(SRV_IP, "f.txt"), *TRUST_227)
    assert (inside.returncode, inside.stdout) == (0, FILE_TEXT), inside.stderr
    assert "227 Entering passive mode (10,200,2,2," in inside.stderr
    inside = lftp(lab, "lan", ftpd.url(SRV_IP), "set ftp:prefer-epsv no; cat f.txt")
    assert (inside.returncode, inside.stdout) == (0, FILE_TEXT), inside.stderr
    assert "227 Entering passive mode (10,200,2,2," in inside.stderr

    outside = curl(lab, "cli", ftpd.url(PUBLIC_IP, "f.txt"), *TRUST_227)
    assert (outside.returncode, outside.stdout) == (0, FILE_TEXT), outside.stderr
    assert "227 Entering passive mode (10,200,1,1," in outside.stderr
    outside = lftp(lab, "cli", ftpd.url(PUBLIC_IP), "set ftp:prefer-epsv no; cat f.txt")
    assert (outside.returncode, outside.stdout) == (0, FILE_TEXT), outside.stderr
    assert "227 Entering passive mode (10,200,1,1," in outside.stderr


def test_split_horizon_by_local_subnet(lab: Lab) -> None:
    # local_direct (the default): lan shares srv's subnet and gets srv's address.
    with LabFtpd(lab, passive={"address": PUBLIC_IP}) as ftpd:
        _split_horizon_checks(lab, ftpd)


def test_split_horizon_by_address_map(lab: Lab) -> None:
    rules = [{"networks": [f"{LAN_IP}/32", "fd00::/8"], "address": SRV_IP}]
    with LabFtpd(lab, passive={"address": PUBLIC_IP, "local_direct": False,
                               "address_map": rules}) as ftpd:
        _split_horizon_checks(lab, ftpd)


def test_hostname_masquerade_follows_dns_changes_without_restart(lab: Lab) -> None:
    name, moved = "ftp.lab.test", "10.200.1.77"
    lab.hosts_file("srv", {name: PUBLIC_IP})
    with LabFtpd(lab, passive={"address": name, "resolve_interval": 1}) as ftpd, \
            Conversation(lab, "cli") as session:
        run = lftp(lab, "cli", ftpd.url(PUBLIC_IP), "set ftp:prefer-epsv no; cat f.txt")
        assert (run.returncode, run.stdout) == (0, FILE_TEXT), run.stderr
        assert "227 Entering passive mode (10,200,1,1," in run.stderr
        session.open(PUBLIC_IP, ftpd.control_port)
        assert pasv_address(session.send("PASV")) == PUBLIC_IP

        lab.hosts_file("srv", {name: moved})  # the dynamic IP changed
        ftpd.wait_log(rf"passive address {name} changed from {PUBLIC_IP} to {moved} "
                      r"event=passive_address_changed")
        assert pasv_address(session.send("PASV")) == moved  # same session, same daemon

        lab.hosts_file("srv", {})  # DNS fails: the last good address stays
        ftpd.wait_log(rf"cannot resolve passive address {name} .*; keeping {moved}")
        assert pasv_address(session.send("PASV")) == moved

        lab.hosts_file("srv", {name: PUBLIC_IP})
        ftpd.wait_log(rf"changed from {moved} to {PUBLIC_IP}")
        assert pasv_address(session.send("PASV")) == PUBLIC_IP
        session.send("QUIT")
        run = curl(lab, "cli", ftpd.url(PUBLIC_IP, "f.txt"), *TRUST_227)
        assert (run.returncode, run.stdout) == (0, FILE_TEXT), run.stderr
        assert ftpd.proc is not None and ftpd.proc.poll() is None  # never restarted


def test_epsv_all_refuses_pasv_port_and_eprt(lab: Lab) -> None:
    with LabFtpd(lab, passive={"address": PUBLIC_IP}) as ftpd:
        epsv = curl(lab, "cli", ftpd.url(PUBLIC_IP, "f.txt"), "-Q", "EPSV ALL")
        assert (epsv.returncode, epsv.stdout) == (0, FILE_TEXT), epsv.stderr
        assert "200 EPSV ALL accepted" in epsv.stderr
        pasv = curl(lab, "cli", ftpd.url(PUBLIC_IP, "f.txt"), "-Q", "EPSV ALL", *TRUST_227)
        assert pasv.returncode != 0
        assert "501 PASV is not allowed after EPSV ALL; use EPSV." in pasv.stderr
        # lftp sees the refusal, then falls back to active mode on a new connection.
        run = lftp(lab, "cli", ftpd.url(PUBLIC_IP),
                   "quote EPSV ALL; set ftp:prefer-epsv no; cat f.txt")
        assert "---> EPSV ALL" in run.stderr
        assert "<--- 501 PASV is not allowed after EPSV ALL; use EPSV." in run.stderr

        with Conversation(lab, "cli") as session:
            session.open(PUBLIC_IP, ftpd.control_port)
            assert session.send("EPSV ALL").startswith("200")
            assert session.send("PASV").startswith("501 PASV is not allowed after EPSV ALL")
            assert session.send("PORT 10,200,1,2,117,48").startswith("501 PORT is not allowed")
            assert session.send("EPRT |1|10.200.1.2|30000|").startswith("501 EPRT is not")
            assert session.send("EPSV").startswith("229")


def test_ftps_needs_the_address_because_the_nat_helper_cannot_read_tls(
        lab: Lab, tmp_path: Path) -> None:
    # The conntrack FTP helper on rtr rewrites plain-text 227 replies, which hides
    # a missing [passive] address -- until the control connection is encrypted.
    lab.set_ct_ftp_helper("rtr", port=lab.control_port)
    tls = tls_section(make_ca(tmp_path / "ca"))
    ftps = ("--ssl-reqd", "--insecure", *TRUST_227)  # the test CA names 127.0.0.1 only
    with LabFtpd(lab, tls=tls) as ftpd:
        plain = curl(lab, "cli", ftpd.url(PUBLIC_IP, "f.txt"), *TRUST_227)
        assert (plain.returncode, plain.stdout) == (0, FILE_TEXT), plain.stderr
        assert "227 Entering passive mode (10,200,1,1," in plain.stderr  # rewritten by rtr
        secure = curl(lab, "cli", ftpd.url(PUBLIC_IP, "f.txt"), *ftps, "--connect-timeout", "2")
        assert secure.returncode != 0
        assert "227 Entering passive mode (10,200,2,2," in secure.stderr  # not rewritten
    with LabFtpd(lab, tls=tls, passive={"address": PUBLIC_IP}) as ftpd:
        secure = curl(lab, "cli", ftpd.url(PUBLIC_IP, "f.txt"), *ftps)
        assert (secure.returncode, secure.stdout) == (0, FILE_TEXT), secure.stderr


def test_router_that_source_nats_inbound_clients_still_gets_the_public_address(
        lab: Lab) -> None:
    # Like Docker's userland proxy or some load balancers: rtr also masquerades what it
    # forwards to srv, so every outside client appears as rtr's inside address -- on
    # srv's own subnet. local_direct must not take it for a LAN client.
    lab.run("rtr", "nft", "add rule ip lab postrouting oifname \"inside\" masquerade",
            check=True)  # gone at the lab's reset (the table is replaced)
    with LabFtpd(lab, passive={"address": PUBLIC_IP}) as ftpd:
        run = curl(lab, "cli", ftpd.url(PUBLIC_IP, "f.txt"), *TRUST_227)
        assert (run.returncode, run.stdout) == (0, FILE_TEXT), run.stderr
        assert "227 Entering passive mode (10,200,1,1," in run.stderr
        run = lftp(lab, "cli", ftpd.url(PUBLIC_IP), "set ftp:prefer-epsv no; cat f.txt")
        assert (run.returncode, run.stdout) == (0, FILE_TEXT), run.stderr
        assert "remote_addr=10.200.2.1" in ftpd.log()  # what srv saw: the router
        # A real LAN client still gets srv's own address.
        run = curl(lab, "lan", ftpd.url(SRV_IP, "f.txt"), *TRUST_227)
        assert (run.returncode, run.stdout) == (0, FILE_TEXT), run.stderr
        assert "227 Entering passive mode (10,200,2,2," in run.stderr

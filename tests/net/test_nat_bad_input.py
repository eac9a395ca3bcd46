"""Hostile and broken data-connection input, through the lab: reply codes, and
nothing leaks (passive ports return to the pool, the worker's fd count
returns to where it was)."""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil
import pytest

from .ftplab import Conversation, LabFtpd, passive_port, port_argument, stats_totals
from .lab import CLI_IP, PUBLIC_IP, SRV_IP, Lab

MALFORMED = [
    ("PORT 10,200,1,2,117", "501 PORT needs six comma-separated numbers"),
    ("PORT 10,200,1,2,117,48,1", "501 PORT needs six comma-separated numbers"),
    ("PORT 10,200,1,256,117,48", "501 PORT field 256 is out of range"),
    ("PORT 10,200,1,2,0,0", "501 PORT names port 0"),
    ("PORT 10,200,1,2,x,48", "501 PORT field 'x' is not a number"),
    ("PORT 2001:db8::2,117,48", "501 PORT carries only IPv4 addresses"),
    ("PORT 10,200,1,2,0,22", "501 Refused PORT to privileged port 22"),
    ("PORT 10,200,1,3,117,48", "501 Refused PORT to foreign address 10.200.1.3"),
    ("EPRT |1|10.200.1.2|0|", "501 EPRT names port 0"),
    ("EPRT |1|10.200.1.2|70000|", "501 EPRT port 70000 is out of range"),
    ("EPRT |1|10.200.1.300|30000|", "501 EPRT address '10.200.1.300' is not a valid IPv4"),
    ("EPRT |1|2001:db8::2|30000|", "501 EPRT address '2001:db8::2' is not a valid IPv4"),
    ("EPRT |2|2001:db8::2|30000|", "501 Refused EPRT to foreign address 2001:db8::2"),
    ("EPRT |9|10.200.1.2|30000|", "522 Network protocol not supported, use (1,2)"),
    ("EPRT |1|10.200.1.2|", "501 EPRT needs three fields between delimiters"),
    ("EPRT 1.2.3.4 30000", "501 EPRT delimiter '1' is not allowed"),
    ("EPRT", "501"),
]


def _settle(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `check` (the worker closes sessions on its next loop pass)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def _listening(worker: psutil.Process, ports: range) -> list[int]:
    """Passive ports listening in the worker's network namespace (srv runs only ftpd).

    psutil's net_connections() reads the *caller's* namespace, so read the worker's.
    """
    listening = []
    for name in ("tcp", "tcp6"):
        with open(f"/proc/{worker.pid}/net/{name}") as table:
            for row in list(table)[1:]:
                local, state = row.split()[1], row.split()[3]
                port = int(local.rsplit(":", 1)[1], 16)
                if state == "0A" and port in ports:  # 0A: LISTEN
                    listening.append(port)
    return sorted(listening)


@pytest.fixture
def single_worker(lab: Lab):  # type: ignore[no-untyped-def]
    """One worker, two passive ports (both forwarded), a warmed-up fd baseline."""
    lab.set_rtr_forward(lab.control_port, (30000, 30001))
    with LabFtpd(lab, passive_range=(30000, 30001),
                 passive={"address": PUBLIC_IP, "connect_timeout": 1},
                 log={"stats_interval": 1}) as ftpd:
        [worker] = ftpd.workers()
        with Conversation(lab, "cli") as warm:  # lazy set-up must not count as a leak
            warm.open(PUBLIC_IP, ftpd.control_port)
            warm.send("QUIT")
        time.sleep(0.2)
        yield ftpd, worker, worker.num_fds()


def test_malformed_port_and_eprt_get_501_with_the_reason(lab: Lab, single_worker) -> None:  # type: ignore[no-untyped-def]
    ftpd, worker, fds = single_worker
    with Conversation(lab, "cli") as session:
        session.open(PUBLIC_IP, ftpd.control_port)
        for command, expected in MALFORMED:
            reply = session.send(command)
            assert reply.startswith(expected), (command, reply)
            assert session.send("NOOP").startswith("200"), command
        # The session still does a good PORT afterwards.
        port = session.request("listen")["port"]
        assert session.send(f"PORT {port_argument(CLI_IP, port)}").startswith("200")
        session.send("QUIT")
    assert _settle(lambda: worker.num_fds() == fds), (worker.num_fds(), fds)
    # Counted by cause ("EPRT" without an argument is pyftpdlib's syntax error).
    expected = {"refused_malformed": 13, "refused_foreign_address": 2,
                "refused_privileged_port": 1, "port": 1}
    assert _settle(lambda: {k: stats_totals(ftpd.log())[k] for k in expected} == expected), \
        stats_totals(ftpd.log())


def test_pasv_flood_keeps_one_port_and_leaks_nothing(lab: Lab, single_worker) -> None:  # type: ignore[no-untyped-def]
    ftpd, worker, fds = single_worker
    ports = range(30000, 30002)
    with Conversation(lab, "cli") as flooder, Conversation(lab, "cli") as other:
        flooder.open(PUBLIC_IP, ftpd.control_port)
        for i in range(300):
            reply = flooder.send("PASV" if i % 2 else "EPSV")
            assert reply[:3] in ("227", "229") and passive_port(reply) in ports, reply
        # Each PASV closed the previous listener: the flood holds one port only.
        assert len(_listening(worker, ports)) == 1
        other.open(PUBLIC_IP, ftpd.control_port)
        assert passive_port(other.send("PASV")) in ports  # the pool is not exhausted
        assert len(_listening(worker, ports)) == 2
        flooder.send("QUIT")
        other.send("QUIT")
    assert _settle(lambda: not _listening(worker, ports))
    assert _settle(lambda: worker.num_fds() == fds), (worker.num_fds(), fds)


def test_silent_data_connection_frees_its_port_and_leaks_nothing(
        lab: Lab, single_worker) -> None:  # type: ignore[no-untyped-def]
    ftpd, worker, fds = single_worker
    ports = range(30000, 30002)
    with Conversation(lab, "cli") as silent, Conversation(lab, "cli") as other:
        silent.open(PUBLIC_IP, ftpd.control_port)
        port = passive_port(silent.send("PASV"))
        assert silent.request("data_connect", host=PUBLIC_IP, port=port)["error"] == ""
        # Connected and saying nothing: the listener is gone, the port back in the pool.
        assert _settle(lambda: not _listening(worker, ports))
        other.open(PUBLIC_IP, ftpd.control_port)
        assert {passive_port(other.send("PASV")), passive_port(other.send("EPSV"))} <= \
            set(ports)
        # The silent connection is still the session's data channel; an upload over it
        # that never sends a byte ends cleanly when the client closes it.
        assert silent.send("STOR empty.bin").startswith("125")
        silent.request("data_close")
        assert silent.request("reply")["reply"].startswith("226")
        silent.send("QUIT")
        other.send("QUIT")
    assert (ftpd.root / "empty.bin").stat().st_size == 0
    assert _settle(lambda: worker.num_fds() == fds), (worker.num_fds(), fds)


def test_passive_port_nobody_connects_to_gives_425_and_returns(lab: Lab, single_worker) -> None:  # type: ignore[no-untyped-def]
    ftpd, worker, fds = single_worker
    with Conversation(lab, "cli") as session:
        session.open(PUBLIC_IP, ftpd.control_port)
        port = passive_port(session.send("PASV"))
        assert session.send("LIST").startswith("150")
        # connect_timeout = 1: the waiting LIST gets a 425 that says why.
        reply = session.request("reply", timeout=10)["reply"]
        assert reply.startswith(f"425 No data connection arrived on port {port} within 1 s"), \
            reply
        assert session.send("NOOP").startswith("200")
        assert passive_port(session.send("PASV")) in (30000, 30001)
        session.send("QUIT")
    assert _settle(lambda: stats_totals(ftpd.log())["425_timeout"] == 1)
    assert _settle(lambda: worker.num_fds() == fds), (worker.num_fds(), fds)


def test_data_connection_from_a_foreign_address_is_refused(lab: Lab, single_worker) -> None:  # type: ignore[no-untyped-def]
    ftpd, worker, fds = single_worker
    with Conversation(lab, "cli") as session:
        session.open(PUBLIC_IP, ftpd.control_port)
        assert session.send("TYPE I").startswith("200")
        port = passive_port(session.send("PASV"))
        # lan (inside, next to srv) grabs the port first: refused, and the listener stays
        # for the real client, which then transfers normally.
        lab.connect("lan", SRV_IP, port, timeout=2)
        ftpd.wait_log(r"event=data_foreign_rejected .*peer=10\.200\.2\.3")
        assert session.request("data_connect", host=PUBLIC_IP, port=port)["error"] == ""
        assert session.send("RETR f.txt").startswith("125")
        assert session.request("data_read")["bytes"] > 0
        assert session.request("reply")["reply"].startswith("226")

        # With a transfer waiting, the intruder makes that transfer fail with a 425.
        port = passive_port(session.send("PASV"))
        assert session.send("LIST").startswith("150")
        lab.connect("lan", SRV_IP, port, timeout=2)
        reply = session.request("reply")["reply"]
        assert reply.startswith("425 Rejected data connection from foreign address "
                                "10.200.2.3"), reply
        assert session.send("NOOP").startswith("200")
        session.send("QUIT")
    assert _settle(lambda: stats_totals(ftpd.log())["425_foreign_address"] == 1)
    assert stats_totals(ftpd.log())["foreign_data_rejected"] == 1
    assert _settle(lambda: worker.num_fds() == fds), (worker.num_fds(), fds)

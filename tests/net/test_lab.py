"""The lab's topology, proven with real TCP traffic and no FTP daemon."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import pytest

from .lab import (
    CLI_IP,
    CPC_IP,
    CRTR_WAN_IP,
    HOSTS,
    LAN_IP,
    PREFIX,
    PUBLIC_IP,
    SRV_IP,
    Lab,
    cleanup_stale,
)

# A dropped SYN never gets an answer; on veths a live path answers in well under 10 ms.
DROP_TIMEOUT = 0.5


def test_every_namespace_has_loopback_up(lab: Lab) -> None:
    for host in HOSTS:
        out = lab.run(host, "ip", "-o", "link", "show", "lo", check=True).stdout
        assert "UP" in out.split("<", 1)[1].split(">", 1)[0], (host, out)


def test_control_port_is_dnated_to_srv_with_the_client_address_intact(lab: Lab) -> None:
    with lab.listen("srv", [lab.control_port]) as server:
        probe = lab.connect("cli", PUBLIC_IP, lab.control_port)
        assert probe.ok, probe
        seen = server.accepted()
    assert seen is not None
    # DNAT only: srv sees the real client, on the port the client dialled.
    assert (seen.ip, seen.lport) == (CLI_IP, lab.control_port)
    assert probe.reply == f"hello {CLI_IP}:{seen.port}\n"


@pytest.mark.parametrize("edge", ["low", "high"])
def test_both_ends_of_the_passive_range_are_forwarded(lab: Lab, edge: str) -> None:
    low, high = lab.passive_range
    port = low if edge == "low" else high
    with lab.listen("srv", [port]) as server:
        probe = lab.connect("cli", PUBLIC_IP, port)
        seen = server.accepted()
    assert probe.ok, probe
    assert seen is not None and (seen.ip, seen.lport) == (CLI_IP, port)


@pytest.mark.parametrize("side", ["below", "above"])
def test_ports_just_outside_the_passive_range_are_dropped(lab: Lab, side: str) -> None:
    low, high = lab.passive_range
    port = low - 1 if side == "below" else high + 1
    before = lab.counter("rtr", "in_drop")
    # srv listens on the port too: only the router can be what stops the connection.
    with lab.listen("srv", [port]) as server:
        probe = lab.connect("cli", PUBLIC_IP, port, timeout=DROP_TIMEOUT)
        assert server.accepted(timeout=0.2) is None
    # Dropped, not refused: a firewall's silence is what makes FTP clients hang.
    assert probe.error == "timeout", probe
    assert lab.counter("rtr", "in_drop") > before


def test_srv_is_not_reachable_from_outside_except_through_dnat(lab: Lab) -> None:
    before = lab.counter("rtr", "fwd_drop")
    with lab.listen("srv", [lab.control_port]) as server:
        probe = lab.connect("cli", SRV_IP, lab.control_port, timeout=DROP_TIMEOUT)
        assert server.accepted(timeout=0.2) is None
    assert probe.error == "timeout", probe
    assert lab.counter("rtr", "fwd_drop") > before


def test_set_rtr_forward_replaces_the_forwarded_ports(lab: Lab) -> None:
    old_control, (old_low, _) = lab.control_port, lab.passive_range
    lab.set_rtr_forward(2121, (31000, 31000))
    assert (lab.control_port, lab.passive_range) == (2121, (31000, 31000))
    with lab.listen("srv", [old_control, old_low, 2121, 31000]) as server:
        for port in (2121, 31000):
            assert lab.connect("cli", PUBLIC_IP, port).ok, port
        for port in (old_control, old_low, 31001):
            probe = lab.connect("cli", PUBLIC_IP, port, timeout=DROP_TIMEOUT)
            assert probe.error == "timeout", (port, probe)
        served = [server.accepted(timeout=0.2) for _ in range(3)]
    assert sorted(a.lport for a in served if a is not None) == [2121, 31000]
    assert served[2] is None


def test_set_rtr_forward_rejects_nonsense(lab: Lab) -> None:
    with pytest.raises(ValueError):
        lab.set_rtr_forward(21, (30010, 30000))


def test_cpc_is_masqueraded_by_crtr(lab: Lab) -> None:
    with lab.listen("srv", [lab.control_port]) as server:
        probe = lab.connect("cpc", PUBLIC_IP, lab.control_port)
        seen = server.accepted()
    assert probe.ok, probe
    assert seen is not None and seen.ip == CRTR_WAN_IP


def test_cpc_cannot_be_reached_from_outside_crtr(lab: Lab) -> None:
    # cli sits on crtr's wan segment: route cpc's private subnet at crtr, as a neighbour
    # on the same ISP segment could, to show crtr's firewall (not routing) stops it.
    route = ["10.200.3.0/24", "via", CRTR_WAN_IP]
    lab.run("cli", "ip", "route", "add", *route, check=True)
    try:
        before = lab.counter("crtr", "fwd_drop")
        with lab.listen("cpc", [4021]) as victim:
            probe = lab.connect("cli", CPC_IP, 4021, timeout=DROP_TIMEOUT)
            assert victim.accepted(timeout=0.2) is None
        assert probe.error == "timeout", probe
        assert lab.counter("crtr", "fwd_drop") > before
    finally:
        lab.run("cli", "ip", "route", "del", *route, check=True)


def test_lan_reaches_srv_directly(lab: Lab) -> None:
    before = lab.counter("rtr", "fwd_drop")
    with lab.listen("srv", [lab.control_port]) as server:
        probe = lab.connect("lan", SRV_IP, lab.control_port)
        seen = server.accepted()
    assert probe.ok, probe
    # Bridged next to srv: no NAT, and rtr's firewall never saw it.
    assert seen is not None and seen.ip == LAN_IP
    assert lab.counter("rtr", "fwd_drop") == before


def test_srv_outbound_is_masqueraded_and_keeps_source_port_20(lab: Lab) -> None:
    # What an active-mode data connection looks like from the client's side.
    with lab.listen("cli", [4020]) as client:
        probe = lab.connect("srv", CLI_IP, 4020, source_port=20)
        seen = client.accepted()
    assert probe.ok, probe
    assert seen is not None and (seen.ip, seen.port) == (PUBLIC_IP, 20)
    assert (PUBLIC_IP, 20, 4020) in lab.incoming_syns("cli")


def test_incoming_syns_lists_only_syns_since_reset(lab: Lab) -> None:
    with lab.listen("cpc", [4022]):
        assert lab.connect("cpc", "127.0.0.1", 4022).ok
    assert any(dport == 4022 for _, _, dport in lab.incoming_syns("cpc"))
    lab.reset()
    assert lab.incoming_syns("cpc") == set()


def _port_command_seen_by_srv(lab: Lab) -> str:
    """Send a PORT for cpc's own address from cpc; return the PORT line srv received."""
    port_cmd = f"PORT {CPC_IP.replace('.', ',')},156,64\r\n"
    with lab.listen("srv", [lab.control_port]) as server:
        # USER first: the helper ignores a direction's first segment (it cannot know the
        # segment starts a line).
        probe = lab.connect(
            "cpc", PUBLIC_IP, lab.control_port, send=["USER anonymous\r\n", port_cmd]
        )
        seen = server.accepted()
    assert probe.ok, probe
    assert seen is not None
    user, port, rest = seen.data.split("\r\n")
    assert (user, rest) == ("USER anonymous", "")
    return port


def test_ct_ftp_helper_on_crtr_rewrites_port_commands(lab: Lab) -> None:
    private, public = CPC_IP.replace(".", ","), CRTR_WAN_IP.replace(".", ",")
    assert _port_command_seen_by_srv(lab).startswith(f"PORT {private},")
    lab.set_ct_ftp_helper("crtr", port=lab.control_port, enabled=True)
    assert _port_command_seen_by_srv(lab).startswith(f"PORT {public},")
    lab.set_ct_ftp_helper("crtr", port=lab.control_port, enabled=False)
    assert _port_command_seen_by_srv(lab).startswith(f"PORT {private},")


@pytest.mark.skipif(shutil.which("conntrack") is None, reason="needs the conntrack tool")
def test_ct_ftp_helper_on_rtr_attaches_only_to_its_port(lab: Lab) -> None:
    lab.set_rtr_forward(2121, lab.passive_range)

    def helped_control_connections() -> list[str]:
        with lab.listen("srv", [2121]):
            assert lab.connect("cli", PUBLIC_IP, 2121).ok
        lines = lab.conntrack("rtr").splitlines()
        return [line for line in lines if "dport=2121" in line and "helper=ftp" in line]

    # A `dport 21` helper rule does nothing for a server on 2121 (the notes' trap).
    lab.set_ct_ftp_helper("rtr", port=21, enabled=True)
    assert helped_control_connections() == []
    lab.set_ct_ftp_helper("rtr", port=2121, enabled=True)
    assert helped_control_connections() != []


_RESOLVER = """
import socket, sys
for line in sys.stdin:
    try:
        print(socket.gethostbyname(line.strip()), flush=True)
    except OSError:
        print("unresolved", flush=True)
"""


def test_hosts_file_controls_resolution_of_a_running_process(lab: Lab) -> None:
    name = "ftp.lab.test"
    lab.hosts_file("srv", {name: PUBLIC_IP})
    proc = lab.popen(
        "srv",
        [sys.executable, "-I", "-S", "-c", _RESOLVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    stdin: IO[str] | None = proc.stdin
    stdout: IO[str] | None = proc.stdout
    assert stdin is not None and stdout is not None

    def resolve() -> str:
        stdin.write(name + "\n")
        stdin.flush()
        return stdout.readline().strip()

    assert resolve() == PUBLIC_IP
    lab.hosts_file("srv", {name: CRTR_WAN_IP})
    assert resolve() == CRTR_WAN_IP  # same process, new answer
    lab.hosts_file("srv", {})
    assert resolve() == "unresolved"
    stdin.close()
    assert proc.wait(timeout=5) == 0
    # Unknown names fail at once: the lab's resolv.conf points at a closed local port.
    started = time.monotonic()
    assert lab.run("srv", "getent", "hosts", "nowhere.lab.test").returncode != 0
    assert time.monotonic() - started < 2
    # Per host, and never the machine's own file.
    lab.hosts_file("srv", {name: PUBLIC_IP})
    assert lab.run("cli", "getent", "hosts", name).returncode != 0
    assert name not in Path("/etc/hosts").read_text()


def test_popen_pid_is_the_program_and_reset_stops_it(lab: Lab) -> None:
    proc = lab.popen("srv", ["sleep", "60"])
    netns = Path(f"/run/netns/{lab.ns('srv')}")
    # The PID a test holds is the program itself once the wrapper has exec'd (so signals
    # reach the daemon, not a shell), and it lives in srv's namespace.
    comm = Path(f"/proc/{proc.pid}/comm")
    deadline = time.monotonic() + 5
    while comm.read_text().strip() != "sleep" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert comm.read_text().strip() == "sleep"
    assert os.stat(f"/proc/{proc.pid}/ns/net").st_ino == netns.stat().st_ino
    lab.reset()
    assert proc.poll() is not None


def test_cleanup_stale_removes_labs_of_dead_processes_only(lab: Lab) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale_ns = f"{PREFIX}{dead.pid}-cli"
    stale_dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{dead.pid}-"))
    subprocess.run(["ip", "netns", "add", stale_ns], check=True, timeout=5)
    try:
        assert cleanup_stale() == [stale_ns]
        listing = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True, timeout=5
        ).stdout
        assert stale_ns not in listing
        assert not stale_dir.exists()
        # This (live) lab is untouched.
        assert all(lab.ns(host) in listing for host in HOSTS)
    finally:
        subprocess.run(["ip", "netns", "delete", stale_ns], capture_output=True, timeout=5)
        shutil.rmtree(stale_dir, ignore_errors=True)

"""Which address a 227 reply carries for which client, and how names stay fresh."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest

from ftpd import config, nat
from ftpd.settings import AddressRule

Addr = namedtuple("Addr", "family address netmask broadcast ptp")

LAN = (ipaddress.ip_network("192.168.1.0/24"), ipaddress.ip_network("2001:db8:1::/64"))


def rule(networks: list[str], address: str) -> AddressRule:
    return AddressRule(tuple(ipaddress.ip_network(n) for n in networks), address)


def table(default: str = "203.0.113.7", rules: tuple[AddressRule, ...] = (),
          local_direct: bool = True, resolved: dict[str, str] | None = None
          ) -> nat.PassiveAddresses:
    return nat.PassiveAddresses(default, rules, local_direct, resolved or {}, LAN)


@pytest.mark.parametrize(("client", "expected"), [
    ("198.51.100.9", "203.0.113.7"),       # the internet: the public address
    ("192.168.1.20", "192.168.1.5"),       # same subnet: the address it connected to
    ("::ffff:192.168.1.20", "192.168.1.5"),  # v4-mapped on a dual-stack listener
    ("127.0.0.1", "192.168.1.5"),          # loopback
    ("::1", "192.168.1.5"),
    ("2001:db8:1::20", "192.168.1.5"),     # IPv6 on our subnet
    ("2001:db8:2::20", "203.0.113.7"),
    ("fe80::1%eth0", "203.0.113.7"),       # scope ids do not break parsing
])
def test_local_direct_and_default(client: str, expected: str) -> None:
    assert table().address_for(client, "192.168.1.5") == expected


def test_the_default_gateway_is_not_a_direct_client(tmp_path: Path) -> None:
    # A router that source-NATs inbound connections (Docker's userland proxy, some load
    # balancers) makes every client appear as itself, on our subnet.
    routes = tmp_path / "route"
    routes.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
        "eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\n"   # default via 192.168.1.1
        "eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n")
    gateways = nat.default_gateways(str(routes))
    assert gateways == {ipaddress.ip_address("192.168.1.1")}
    addresses = nat.PassiveAddresses("203.0.113.7", (), True, {}, LAN, gateways)
    assert addresses.address_for("192.168.1.1", "192.168.1.5") == "203.0.113.7"
    assert addresses.address_for("192.168.1.20", "192.168.1.5") == "192.168.1.5"
    assert nat.default_gateways(str(tmp_path / "missing")) == frozenset()


def test_local_direct_off_sends_everyone_to_the_default() -> None:
    assert table(local_direct=False).address_for("192.168.1.20", "192.168.1.5") == \
        "203.0.113.7"


def test_first_matching_map_entry_wins_over_local_direct_and_default() -> None:
    rules = (rule(["10.0.0.0/8", "fd00::/8"], "10.0.0.5"),
             rule(["10.1.0.0/16"], "10.1.0.5"),  # shadowed by the first entry
             rule(["192.168.1.0/25"], "172.16.0.1"))
    addresses = table(rules=rules)
    assert addresses.address_for("10.1.2.3", "192.168.1.5") == "10.0.0.5"
    assert addresses.address_for("::ffff:10.9.9.9", "::ffff:192.168.1.5") == "10.0.0.5"
    assert addresses.address_for("fd12::1", "192.168.1.5") == "10.0.0.5"
    assert addresses.address_for("192.168.1.20", "192.168.1.5") == "172.16.0.1"
    assert addresses.address_for("192.168.1.200", "192.168.1.5") == "192.168.1.5"
    assert addresses.address_for("8.8.8.8", "192.168.1.5") == "203.0.113.7"


def test_no_default_means_the_connected_address() -> None:
    assert table(default="").address_for("198.51.100.9", "192.168.1.5") is None
    assert table(default="").address_for("not an address", "192.168.1.5") is None


def test_names_use_the_resolved_address_and_fall_back_until_resolved() -> None:
    rules = (rule(["10.0.0.0/8"], "vpn.example.test"),)
    addresses = table(default="ftp.example.test", rules=rules)
    assert addresses.names == ["ftp.example.test", "vpn.example.test"]
    assert addresses.address_for("198.51.100.9", "192.168.1.5") is None
    assert addresses.address_for("10.0.0.9", "192.168.1.5") is None
    changes, failures = addresses.apply(
        {"ftp.example.test": "203.0.113.9", "vpn.example.test": OSError("no answer")}, None)
    assert changes == [nat.Change("ftp.example.test", None, "203.0.113.9")]
    assert list(failures) == ["vpn.example.test"]
    assert addresses.address_for("198.51.100.9", "192.168.1.5") == "203.0.113.9"
    # A failed lookup keeps the last good address.
    addresses.apply({"ftp.example.test": OSError("timeout")}, None)
    assert addresses.address_for("198.51.100.9", "192.168.1.5") == "203.0.113.9"


def test_local_networks_from_interface_addresses() -> None:
    interfaces = {
        "lo": [Addr(socket.AF_INET, "127.0.0.1", "255.0.0.0", None, None),
               Addr(socket.AF_INET6, "::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None,
                    None)],
        "eth0": [Addr(socket.AF_INET, "192.168.1.5", "255.255.255.0", None, None),
                 Addr(socket.AF_INET6, "fe80::1%eth0", "ffff:ffff:ffff:ffff::", None, None),
                 Addr(socket.AF_PACKET, "52:54:00:12:34:56", None, None, None)],
    }
    assert nat.local_networks(interfaces) == (
        ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("192.168.1.0/24"), ipaddress.ip_network("fe80::/64"))


def test_resolve_keeps_the_current_address_among_several_answers(monkeypatch) -> None:
    answers = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 0))
               for ip in ("192.0.2.1", "192.0.2.2")]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answers)
    assert nat.resolve_ipv4("rr.example.test") == "192.0.2.1"
    assert nat.resolve_ipv4("rr.example.test", current="192.0.2.2") == "192.0.2.2"
    assert nat.resolve_ipv4("rr.example.test", current="192.0.2.9") == "192.0.2.1"


def test_names_in_config_and_start_resolution_never_fails(tmp_path: Path, caplog) -> None:
    path = tmp_path / "ftpd.toml"
    path.write_text('[passive]\naddress = "nowhere.invalid"\n'
                    '[[passive.address_map]]\nnetworks = ["10.0.0.0/8"]\naddress = "10.0.0.5"\n'
                    '[[passive.address_map]]\nnetworks = ["172.16.0.0/12"]\n'
                    'address = "localhost"\n')
    cfg = config.load(str(path))
    assert nat.names_in(cfg) == ["nowhere.invalid", "localhost"]
    with caplog.at_level(logging.WARNING):
        resolved = nat.resolve_at_start(cfg)
    assert resolved == {"localhost": "127.0.0.1"}
    assert "cannot resolve 'nowhere.invalid'" in caplog.text
    assert nat.static_address(cfg, resolved) is None


class FakeLoop:
    def __init__(self) -> None:
        self.every: list[tuple[float, Any]] = []

    def call_every(self, seconds: float, fn: Any) -> Any:
        self.every.append((seconds, fn))
        return self


class FakeOffloader:
    """Runs the job at once but delivers the result only when told (like the loop)."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, Any]] = []
        self.results: list[Any] = []

    def submit(self, fn: Any, args: tuple[Any, ...], callback: Any) -> None:
        self.pending.append((callback, self.results.pop(0)))

    def deliver(self) -> None:
        while self.pending:
            callback, result = self.pending.pop(0)
            callback(result)


def test_refresher_logs_changes_once_and_never_stacks_lookups(caplog) -> None:
    addresses = table(default="ftp.example.test", local_direct=False,
                      resolved={"ftp.example.test": "203.0.113.1"})
    loop, offloader = FakeLoop(), FakeOffloader()
    refresher = nat.Refresher(addresses, offloader, loop, 300, worker=0)
    refresher.start()
    assert loop.every[0][0] == 300
    caplog.set_level(logging.DEBUG, logger="ftpd.events")

    offloader.results = [({"ftp.example.test": "203.0.113.2"}, None, None)]
    refresher.refresh()
    refresher.refresh()  # still waiting for the first lookup: not submitted again
    assert len(offloader.pending) == 1
    offloader.deliver()
    assert addresses.resolved == {"ftp.example.test": "203.0.113.2"}
    assert "passive address ftp.example.test changed from 203.0.113.1 to 203.0.113.2" \
        in caplog.text

    outage = ({"ftp.example.test": OSError("Temporary failure in name resolution")}, None, None)
    offloader.results = [outage, outage]
    for _ in range(2):
        refresher.refresh()
        offloader.deliver()
    assert caplog.text.count("cannot resolve passive address ftp.example.test") == 1
    assert "keeping 203.0.113.2" in caplog.text
    assert addresses.resolved == {"ftp.example.test": "203.0.113.2"}

    offloader.results = [({"ftp.example.test": "203.0.113.2"}, None, None)]
    refresher.refresh()
    offloader.deliver()
    assert "ftp.example.test resolves again" in caplog.text


def test_refresher_does_nothing_without_names_or_local_direct() -> None:
    loop = FakeLoop()
    nat.Refresher(table(local_direct=False), FakeOffloader(), loop, 1, worker=0).start()
    assert loop.every == []

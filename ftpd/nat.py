"""The address in 227 replies, chosen per client; masquerade names kept fresh.

pyftpdlib's `masquerade_address_map` is keyed by the *server's* address, which
cannot say "LAN clients get the LAN address, everyone else the public one".
Here the client's address decides, in this order:

1. the first `[passive] address_map` entry whose networks contain it;
2. with `local_direct`, the address the client connected to, when the client
   is on loopback or on a subnet of one of this host's interfaces (it reaches
   the server directly, no NAT in between) -- unless it is this host's default
   gateway: a router that source-NATs inbound connections (Docker's userland
   proxy, some load balancers) makes every client look like it, and those
   clients need the public address;
3. `[passive] address`;
4. the address the client connected to.

Names (dynamic DNS) are resolved by the supervisor once at start, so the first
227 is already right, then by every worker each `resolve_interval` seconds in
an Offloader thread: never on the event loop, where one slow DNS answer would
stall every session of the worker. Results come back on the loop and replace
the table in one assignment; a failed lookup keeps the last good address.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import interfaces as interfaces_mod
from .logging import event
from .settings import AddressRule, is_ip_literal

log = logging.getLogger("ftpd.nat")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_address(text: str) -> IPAddress | None:
    """A peer address as an object: v4-mapped IPv6 becomes IPv4, a scope id is dropped."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def unmapped(text: str) -> str:
    """`text` with a v4-mapped IPv6 address written as plain IPv4."""
    address = client_address(text)
    return str(address) if address is not None else text


def names_in(config: Any) -> list[str]:
    """The DNS names (not IP literals) in [passive] address and address_map, in order."""
    candidates = [config.passive.address, *(rule.address for rule in config.passive.address_map)]
    names: list[str] = []
    for candidate in candidates:
        if candidate and not is_ip_literal(candidate) and candidate not in names:
            names.append(candidate)
    return names


def resolve_ipv4(name: str, current: str | None = None) -> str:
    """An IPv4 address of `name` (blocking; raises OSError).

    When the address in use is still among the answers it is kept, so a name
    with several A records (round-robin DNS) does not flap between them.
    """
    infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    answers = [str(info[4][0]) for info in infos]
    if not answers:
        raise OSError(f"no IPv4 address for {name!r}")
    return current if current in answers else answers[0]


def resolve_all(names: Iterable[str], current: Mapping[str, str]) -> dict[str, str | OSError]:
    """Resolve every name; a failure is returned, not raised (runs in a thread)."""
    results: dict[str, str | OSError] = {}
    for name in names:
        try:
            results[name] = resolve_ipv4(name, current.get(name))
        except OSError as err:  # socket.gaierror is an OSError
            results[name] = err
    return results


def describe(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def resolve_at_start(config: Any) -> dict[str, str]:
    """Resolve the masquerade names once, in the supervisor, before workers start.

    A name that does not resolve is not fatal: a DNS outage at boot must not
    keep the server down. It is logged, and the workers keep trying every
    resolve_interval seconds; until then such clients get the local address.
    """
    resolved: dict[str, str] = {}
    for name, result in resolve_all(names_in(config), {}).items():
        if isinstance(result, str):
            resolved[name] = result
        else:
            log.warning("%s: passive: cannot resolve %r to an IPv4 address (%s); PASV "
                        "replies use the server's local address until it resolves "
                        "(retried every %d s)", config.origin("passive.address"), name,
                        describe(result), config.passive.resolve_interval)
    return resolved


def static_address(config: Any, resolved: Mapping[str, str]) -> str | None:
    """[passive] address as an IPv4 literal (resolved when it is a name), or None."""
    host = config.passive.address
    return (host if is_ip_literal(host) else resolved.get(host)) if host else None


def _prefix_length(netmask: str) -> int | None:
    """Bits set in a dotted (IPv4) or colon (IPv6) netmask, as getifaddrs() gives it."""
    try:
        return bin(int(ipaddress.ip_address(netmask))).count("1")
    except ValueError:
        return None


def local_networks(interfaces: Mapping[str, Iterable[Any]] | None = None) -> tuple[Network, ...]:
    """The subnets of this host's interfaces (interfaces.net_if_addrs() format)."""
    interfaces = interfaces_mod.net_if_addrs() if interfaces is None else interfaces
    networks: list[Network] = []
    for addresses in interfaces.values():
        for entry in addresses:
            if entry.family not in (socket.AF_INET, socket.AF_INET6) or not entry.netmask:
                continue
            prefix = _prefix_length(entry.netmask)
            if prefix is None:
                continue
            try:
                network = ipaddress.ip_interface(
                    f"{entry.address.split('%', 1)[0]}/{prefix}").network
            except ValueError:
                continue
            if network not in networks:
                networks.append(network)
    return tuple(networks)


def default_gateways(route_table: str = "/proc/net/route") -> frozenset[IPAddress]:
    """The IPv4 default gateways of this host (its network namespace)."""
    gateways: set[IPAddress] = set()
    try:
        with open(route_table) as f:
            rows = [line.split() for line in f.readlines()[1:]]
    except OSError:
        return frozenset()
    for row in rows:
        if len(row) > 2 and row[1] == "00000000" and row[2] != "00000000":
            try:
                gateways.add(ipaddress.IPv4Address(struct.pack("<L", int(row[2], 16))))
            except ValueError:
                continue
    return frozenset(gateways)


@dataclass(frozen=True)
class Change:
    """A masquerade name whose address changed (old is None the first time)."""

    name: str
    old: str | None
    new: str


class PassiveAddresses:
    """Decides the 227 address per client; owned by one worker's event loop."""

    def __init__(self, default: str, rules: tuple[AddressRule, ...], local_direct: bool,
                 resolved: Mapping[str, str], networks: tuple[Network, ...],
                 gateways: frozenset[IPAddress] = frozenset()) -> None:
        self.default = default
        self.rules = rules
        self.local_direct = local_direct
        self.resolved: dict[str, str] = dict(resolved)
        self.networks = networks
        self.gateways = gateways

    @classmethod
    def from_config(cls, config: Any, resolved: Mapping[str, str],
                    networks: tuple[Network, ...] | None = None) -> PassiveAddresses:
        passive = config.passive
        if networks is None:
            networks = local_networks() if passive.local_direct else ()
        gateways = default_gateways() if passive.local_direct else frozenset()
        return cls(passive.address, passive.address_map, passive.local_direct, resolved,
                   networks, gateways)

    @property
    def names(self) -> list[str]:
        candidates = [self.default, *(rule.address for rule in self.rules)]
        return [c for c in dict.fromkeys(candidates) if c and not is_ip_literal(c)]

    def _lookup(self, host: str) -> str | None:
        return host if is_ip_literal(host) else self.resolved.get(host)

    def address_for(self, client: str, local: str) -> str | None:
        """The address for a 227 reply to `client`, whose control connection reached
        `local`; None means "the address the client connected to"."""
        peer = client_address(client)
        if peer is None:
            return None
        for rule in self.rules:
            if any(peer.version == net.version and peer in net for net in rule.networks):
                # An explicit entry wins; if its name does not resolve (yet), the
                # connected-to address is the best guess left.
                return self._lookup(rule.address)
        if self.local_direct and peer not in self.gateways and (peer.is_loopback or any(
                peer.version == net.version and peer in net for net in self.networks)):
            return unmapped(local)
        if self.default:
            return self._lookup(self.default)
        return None

    def apply(self, results: Mapping[str, str | OSError], networks: tuple[Network, ...] | None,
              gateways: frozenset[IPAddress] | None = None
              ) -> tuple[list[Change], dict[str, OSError]]:
        """Take new lookup results; failures keep the previous address."""
        changes: list[Change] = []
        failures: dict[str, OSError] = {}
        for name, result in results.items():
            if isinstance(result, OSError):
                failures[name] = result
                continue
            old = self.resolved.get(name)
            if old != result:
                changes.append(Change(name, old, result))
        if changes:
            # One assignment: a PASV handled between two names never sees half.
            self.resolved = {**self.resolved, **{c.name: c.new for c in changes}}
        if networks is not None:
            self.networks = networks
        if gateways is not None:
            self.gateways = gateways
        return changes, failures


def _lookup_job(names: list[str], current: dict[str, str], interfaces: bool
                ) -> tuple[dict[str, str | OSError], tuple[Network, ...] | None,
                           frozenset[IPAddress] | None]:
    """The blocking part of a refresh, run in an Offloader thread."""
    if not interfaces:
        return resolve_all(names, current), None, None
    return resolve_all(names, current), local_networks(), default_gateways()


class Refresher:
    """Re-resolves masquerade names (and re-reads interface subnets) periodically.

    Every worker refreshes its own table; only worker 0 logs changes at info
    level, so one DNS change is one log line, not one per worker.
    """

    def __init__(self, addresses: PassiveAddresses, offloader: Any, ioloop: Any,
                 interval: float, worker: int) -> None:
        self.addresses = addresses
        self.offloader = offloader
        self.ioloop = ioloop
        self.interval = interval
        self.worker = worker
        self._busy = False
        self._failing: set[str] = set()

    def start(self) -> None:
        if self.addresses.names or self.addresses.local_direct:
            self.ioloop.call_every(self.interval, self.refresh)

    def refresh(self) -> None:
        if self._busy:
            return  # a lookup is still running (slow DNS): never stack them up
        self._busy = True
        self.offloader.submit(
            _lookup_job, (self.addresses.names, dict(self.addresses.resolved),
                          self.addresses.local_direct), self._done)

    def _done(self, outcome: Any) -> None:
        self._busy = False
        if isinstance(outcome, BaseException):
            log.error("refreshing the passive addresses failed: %r", outcome)
            return
        results, networks, gateways = outcome
        changes, failures = self.addresses.apply(results, networks, gateways)
        level = logging.INFO if self.worker == 0 else logging.DEBUG
        for change in changes:
            self._failing.discard(change.name)
            old = change.old or "the local address"
            event("passive_address_changed",
                  f"passive address {change.name} changed from {old} to {change.new}",
                  level, host=change.name, old=change.old or "", new=change.new,
                  worker=self.worker)
        for name in [n for n in results if n not in failures and n in self._failing]:
            self._failing.discard(name)
            event("passive_address_resolved", f"{name} resolves again",
                  level, host=name, address=self.addresses.resolved.get(name), worker=self.worker)
        for name, err in failures.items():
            if name in self._failing:
                continue  # said once per outage, not every interval
            self._failing.add(name)
            kept = self.addresses.resolved.get(name)
            keeping = f"keeping {kept}" if kept else "using the local address meanwhile"
            event("passive_address_unresolved",
                  f"cannot resolve passive address {name} ({describe(err)}); {keeping}",
                  logging.WARNING if self.worker == 0 else logging.DEBUG,
                  host=name, kept=kept or "", worker=self.worker)

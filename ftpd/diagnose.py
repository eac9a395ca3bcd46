"""Self-diagnosis of NAT and firewall set-ups, at start and in `ftpd check`.

Each rule looks at the configuration *and this host* (interface addresses,
sysctls, which ports can be bound) and returns warnings that name the
setting, the symptom a client would see and the fix. The rules, and why:

- no passive.address while every address of this host is private: behind NAT
  PASV clients get an unroutable 227 address ("LIST hangs").
- passive.address itself private: it is what every client outside
  address_map and this host's subnets gets, so internet clients cannot use
  it; private-only audiences belong in address_map.
- passive range inside the kernel's ephemeral range: outgoing connections of
  this host take passive ports at random (ip_local_reserved_ports fixes it).
- passive ports that cannot be bound (probed at start and in `ftpd check`).
- connect_from_port_20 without the privilege to bind port 20 (or with
  process isolation, whose sessions run as the user).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from . import interfaces as interfaces_mod
from .nat import resolve_ipv4
from .settings import is_ip_literal

CAP_NET_BIND_SERVICE = 10
SHOWN = 5  # ports named in one warning; the rest are counted


def warnings(config: Any, probe_ports: bool = False, *,
             interfaces: Mapping[str, Iterable[Any]] | None = None,
             sysctl_dir: str = "/proc/sys/net/ipv4", euid: int | None = None,
             capabilities: int | None = None) -> list[str]:
    """Every NAT/firewall warning for `config` on this host (arguments for tests)."""
    interfaces = interfaces_mod.net_if_addrs() if interfaces is None else interfaces
    found: list[str] = []
    found += private_without_address(config, interfaces)
    found += private_address(config)
    found += ephemeral_overlap(config, sysctl_dir)
    if probe_ports:
        found += unbindable_ports(config)
    found += port_20_privilege(config, os.geteuid() if euid is None else euid,
                               effective_capabilities() if capabilities is None else capabilities)
    return found


def _range_text(ports: range) -> str:
    return f"{ports.start}-{ports.stop - 1}" if len(ports) > 1 else str(ports.start)


def _endpoints(config: Any) -> list[Any]:
    tls = getattr(config, "sections", {}).get("tls")
    return [*config.server.listen, *(getattr(tls, "implicit_listen", ()) or ())]


def _candidate_ipv4(config: Any, interfaces: Mapping[str, Iterable[Any]]
                    ) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses a PASV client may be told when no masquerade address applies."""
    found: list[ipaddress.IPv4Address] = []
    for endpoint in _endpoints(config):
        if endpoint.host in ("0.0.0.0", "::"):
            hosts = [entry.address for entries in interfaces.values() for entry in entries
                     if entry.family == socket.AF_INET]
        else:
            hosts = [endpoint.host]
        for host in hosts:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                continue
            if isinstance(address, ipaddress.IPv4Address) and not address.is_loopback \
                    and not address.is_link_local and address not in found:
                found.append(address)
    return found


def private_without_address(config: Any, interfaces: Mapping[str, Iterable[Any]]) -> list[str]:
    if config.passive.address:
        return []
    candidates = _candidate_ipv4(config, interfaces)
    if not candidates or any(a.is_global for a in candidates):
        return []  # loopback only (a test), or reachable as is
    listed = ", ".join(map(str, candidates))
    return [
        f"{config.origin('passive.address')}: passive.address is not set and this server's "
        f"addresses ({listed}) are private: PASV clients that reach it through NAT get an "
        "unroutable address in 227 replies (symptoms: 'LIST hangs', 'unroutable address'). "
        "Set passive.address to the public IP or DNS name and forward passive.ports "
        f"({_range_text(config.passive.ports)}) to this host; EPSV clients are unaffected. "
        "(Ignore this if only clients of these networks use the server.)"]


def private_address(config: Any) -> list[str]:
    host = config.passive.address
    if not host:
        return []
    try:
        address = ipaddress.ip_address(host if is_ip_literal(host) else resolve_ipv4(host))
    except (OSError, ValueError):
        return []  # unresolvable names are reported when they are resolved
    if address.is_global or address.is_loopback:
        return []
    shown = host if str(address) == host else f"{host} ({address})"
    return [
        f"{config.origin('passive.address')}: passive.address: {shown} is not a public "
        "address, yet every client outside passive.address_map and this host's subnets gets "
        "it in 227 replies: clients on the internet cannot connect to it. Set the public "
        f"address here; if only clients of certain private networks (LAN, VPN) should get "
        f"{address}, list their networks in passive.address_map instead."]


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def parse_port_list(text: str) -> set[int]:
    """The ports of a sysctl port list such as "8080,50000-50999"."""
    ports: set[int] = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        first, _, last = item.partition("-")
        if first.isdigit() and (last.isdigit() or not last):
            ports.update(range(int(first), int(last or first) + 1))
    return ports


def ephemeral_overlap(config: Any, sysctl_dir: str) -> list[str]:
    span = _read(os.path.join(sysctl_dir, "ip_local_port_range"))
    if not span or len(span.split()) != 2:
        return []
    low, high = (int(x) for x in span.split())
    reserved_text = _read(os.path.join(sysctl_dir, "ip_local_reserved_ports")) or ""
    ports = config.passive.ports
    overlap = set(ports) & set(range(low, high + 1))
    if not overlap - parse_port_list(reserved_text):
        return []
    value = ",".join(filter(None, [reserved_text, _range_text(ports)]))
    return [
        f"{config.origin('passive.ports')}: passive.ports: {_range_text(ports)} overlaps the "
        f"kernel's ephemeral port range {low}-{high} (net.ipv4.ip_local_port_range): "
        "outgoing connections of this host can take passive ports at random. Reserve them: "
        f"`sysctl -w net.ipv4.ip_local_reserved_ports={value}` and the same line in "
        f"/etc/sysctl.d/ftpd.conf, or move passive.ports above {high}."]


def _probe_hosts(config: Any) -> list[str]:
    hosts: list[str] = []
    for endpoint in _endpoints(config):
        if endpoint.host not in hosts:
            hosts.append(endpoint.host)
    return hosts


def probe(host: str, ports: range) -> dict[int, int]:
    """Ports of `ports` that cannot be bound on `host` now, with the errno."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    failed: dict[int, int] = {}
    for port in ports:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # As the passive listener binds: a port in TIME_WAIT is usable.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as err:
            failed[port] = err.errno or 0
        finally:
            sock.close()
    return failed


_WHY = {errno.EADDRINUSE: "in use", errno.EACCES: "permission denied"}


def unbindable_ports(config: Any) -> list[str]:
    ports = config.passive.ports
    found = []
    for host in _probe_hosts(config):
        failed = probe(host, ports)
        if not failed or set(failed.values()) == {errno.EADDRNOTAVAIL}:
            continue  # not an address of this host: server.listen reports that
        # Naming the owners (psutil.net_connections) scans every process's fds:
        # seconds on a busy host, so the admin gets the command instead.
        named = ", ".join(f"{port} ({_WHY.get(code) or os.strerror(code)})"
                          for port, code in sorted(failed.items())[:SHOWN])
        more = f" and {len(failed) - SHOWN} more" if len(failed) > SHOWN else ""
        effect = ("PASV and EPSV will all fail with 425" if len(failed) == len(ports)
                  else "ftpd skips them, so fewer transfers fit at once")
        first = min(failed)
        found.append(
            f"{config.origin('passive.ports')}: passive.ports: {len(failed)} of {len(ports)} "
            f"ports cannot be bound on {host}: {named}{more}; {effect}. `ss -tanp "
            f"'( sport = :{first} )'` shows what holds one; free them or move the range "
            "(and the firewall rules with it).")
    return found


def effective_capabilities() -> int:
    """CapEff of this process (0 when unknown)."""
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def port_20_privilege(config: Any, euid: int, capabilities: int) -> list[str]:
    if not (config.active.enabled and config.active.connect_from_port_20):
        return []
    low = sorted({e.port - 1 for e in _endpoints(config) if 0 < e.port - 1 < 1024})
    ports = ", ".join(map(str, low))
    if low and getattr(config.users, "isolation", "shared") == "process":
        # Isolated sessions run as the user in a chroot: no helper reaches them.
        return [
            f"{config.origin('active.connect_from_port_20')}: active.connect_from_port_20 "
            f"does not work with users.isolation = \"process\": sessions run as the user and "
            f"cannot bind port {ports}, so PORT/EPRT transfers will fail with 425. Turn one "
            "of the two off."]
    if not low or euid == 0 or capabilities & (1 << CAP_NET_BIND_SERVICE):
        return []
    return [
        f"{config.origin('active.connect_from_port_20')}: active.connect_from_port_20: active "
        f"data connections must come from port {ports}, below 1024, but ftpd runs as uid "
        f"{euid} without CAP_NET_BIND_SERVICE: PORT/EPRT transfers will fail with 425. Start "
        "ftpd as root (workers still drop to server.user; a small helper binds the port) or "
        "grant the capability (systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE)."]

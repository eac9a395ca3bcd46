"""The one declared table of settings.

Every setting is declared here once: its section, name, type, default, the
one-line doc and whether SIGHUP can change it. The parser (`config`), `ftpd
check`, the commented `etc/ftpd/ftpd.toml` and the README's settings reference
are all derived from this table, so a new setting is added in exactly one
place.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Invalid(ValueError):
    """A value that does not fit its setting; the text says what is allowed."""


@dataclass(frozen=True)
class Kind:
    """A setting's type: how to parse a TOML value and what is allowed."""

    allowed: str
    parse: Callable[[Any], Any]


def _expect(value: Any, types: type | tuple[type, ...], allowed: str) -> None:
    # bool is an int in Python; TOML keeps them apart, so do we.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise Invalid(f"got {value!r}, expected {allowed}")
    if not isinstance(value, types):
        raise Invalid(f"got {type(value).__name__} {value!r}, expected {allowed}")


def integer(minimum: int = 0, maximum: int | None = None) -> Kind:
    top = "" if maximum is None else f" and <= {maximum}"
    allowed = f"an integer >= {minimum}{top}"

    def parse(value: Any) -> int:
        _expect(value, int, allowed)
        if value < minimum or (maximum is not None and value > maximum):
            raise Invalid(f"{value} is out of range, expected {allowed}")
        return int(value)

    return Kind(allowed, parse)


def number(minimum: float = 0.0) -> Kind:
    allowed = f"a number of seconds >= {minimum:g}"

    def parse(value: Any) -> float:
        _expect(value, (int, float), allowed)
        if value < minimum:
            raise Invalid(f"{value} is out of range, expected {allowed}")
        return float(value)

    return Kind(allowed, parse)


def text(max_length: int = 4096, pattern: str | None = None, allowed: str = "") -> Kind:
    allowed = allowed or "a string"

    def parse(value: Any) -> str:
        _expect(value, str, allowed)
        if len(value) > max_length:
            raise Invalid(f"longer than {max_length} characters")
        if "\n" in value or "\r" in value:
            raise Invalid("must be a single line")
        if pattern and value and not re.fullmatch(pattern, value):
            raise Invalid(f"{value!r} is not {allowed}")
        return value

    return Kind(allowed, parse)


def choice(*options: str) -> Kind:
    allowed = "one of " + ", ".join(f'"{o}"' for o in options)

    def parse(value: Any) -> str:
        _expect(value, str, allowed)
        if value.lower() not in options:
            raise Invalid(f"{value!r} is not {allowed}")
        return value.lower()

    return Kind(allowed, parse)


def workers_kind() -> Kind:
    allowed = 'a number of processes from 1 to 256, or "auto" (one per CPU)'

    def parse(value: Any) -> int:
        if value == "auto":
            return os.cpu_count() or 1
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 256:
            raise Invalid(f"got {value!r}, expected {allowed}")
        return value

    return Kind(allowed, parse)


@dataclass(frozen=True)
class Endpoint:
    """A listening address: host ('' never; '0.0.0.0' or '::' for all) and port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(value: str) -> Endpoint:
    """Parse "host:port" or "[v6]:port"; the host must be an IP literal."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([0-9.]+):(\d{1,5})", value)
    if not match:
        raise Invalid(f'{value!r} is not "IPv4:port" or "[IPv6]:port"')
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise Invalid(f"{host!r} in {value!r} is not an IP address") from None
    if not 1 <= port <= 65535:
        raise Invalid(f"port {port} in {value!r} is not between 1 and 65535")
    return Endpoint(host, port)


def listen_kind(allow_empty: bool = False) -> Kind:
    allowed = ('a list of "IPv4:port" or "[IPv6]:port" strings, e.g. ["0.0.0.0:990"], or []'
               if allow_empty else
               'a non-empty list of "IPv4:port" or "[IPv6]:port" strings, e.g. ["0.0.0.0:21"]')

    def parse(value: Any) -> tuple[Endpoint, ...]:
        _expect(value, list, allowed)
        if not value and not allow_empty:
            raise Invalid(f"the list is empty, expected {allowed}")
        endpoints = []
        for item in value:
            _expect(item, str, allowed)
            endpoints.append(parse_endpoint(item))
        if len(set(endpoints)) != len(endpoints):
            raise Invalid("the same address is listed twice")
        return tuple(endpoints)

    return Kind(allowed, parse)


def port_range_kind() -> Kind:
    allowed = 'a range "FIRST-LAST" of ports between 1024 and 65535, e.g. "50000-50999"'

    def parse(value: Any) -> range:
        _expect(value, str, allowed)
        match = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", value)
        if not match:
            raise Invalid(f"{value!r} is not {allowed}")
        first, last = int(match.group(1)), int(match.group(2))
        if first > last:
            raise Invalid(f"{value!r} is reversed (first port above last), expected {allowed}")
        if first < 1024 or last > 65535:
            raise Invalid(f"{value!r} is outside 1024-65535, expected {allowed}")
        return range(first, last + 1)

    return Kind(allowed, parse)


def path_kind(optional: bool = False) -> Kind:
    allowed = "an absolute path" + (' or "" for none' if optional else "")

    def parse(value: Any) -> str:
        _expect(value, str, allowed)
        if not value and optional:
            return ""
        if not os.path.isabs(value) or "\0" in value:
            raise Invalid(f"{value!r} is not {allowed}")
        return os.path.normpath(value)

    return Kind(allowed, parse)


def boolean() -> Kind:
    allowed = "true or false"

    def parse(value: Any) -> bool:
        if not isinstance(value, bool):
            raise Invalid(f"got {value!r}, expected {allowed}")
        return value

    return Kind(allowed, parse)


# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
_HOSTNAME = re.compile(r"(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


def is_ip_literal(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def parse_masquerade(value: Any, allowed: str) -> str:
    """An IPv4 address or a DNS name for 227 replies ("" allowed: none)."""
    _expect(value, str, allowed)
    value = value.strip()
    if not value:
        return ""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        if address.version == 6:
            raise Invalid(f"{value!r} is an IPv6 address, but 227 replies carry only IPv4; "
                          "IPv6 clients use EPSV, which needs no address")
        return str(address)
    if re.fullmatch(r"[0-9.]+", value):
        raise Invalid(f"{value!r} is not a valid IPv4 address")
    if not _HOSTNAME.fullmatch(value):
        raise Invalid(f"{value!r} is not {allowed}")
    return value.lower().rstrip(".")


def masquerade_kind() -> Kind:
    allowed = 'an IPv4 address or a DNS name, or "" for none'
    return Kind(allowed, lambda value: parse_masquerade(value, allowed))


@dataclass(frozen=True)
class AddressRule:
    """One [passive] address_map entry: clients in `networks` get `address`."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    address: str  # IPv4 literal or DNS name


def _network(text: Any, where: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(text, str):
        raise Invalid(f"{where}: got {text!r}, expected a network like \"10.0.0.0/8\"")
    try:
        return ipaddress.ip_network(text.strip())
    except ValueError as err:
        try:
            loose = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise Invalid(f"{where}: {text!r} is not a network ({err})") from None
        raise Invalid(f"{where}: {text!r} has host bits set; did you mean "
                      f"\"{loose}\"?") from None


def address_map_kind() -> Kind:
    allowed = ('a list of tables { networks = ["CIDR", ...], address = "IPv4 or DNS name" }, '
               'e.g. [{ networks = ["10.0.0.0/8", "fd00::/8"], address = "10.0.0.5" }]')

    def parse(value: Any) -> tuple[AddressRule, ...]:
        _expect(value, list, allowed)
        rules = []
        for number, entry in enumerate(value, 1):
            where = f"entry {number}"
            if not isinstance(entry, dict):
                raise Invalid(f"{where}: got {entry!r}, expected {allowed}")
            unknown = sorted(set(entry) - {"networks", "address"})
            if unknown:
                raise Invalid(f"{where}: unknown key(s) {', '.join(unknown)}; an entry has "
                              "only networks and address")
            for key in ("networks", "address"):
                if key not in entry:
                    raise Invalid(f"{where}: {key} is missing, expected {allowed}")
            networks = entry["networks"]
            if not isinstance(networks, list) or not networks:
                raise Invalid(f"{where}: networks must be a non-empty list of networks like "
                              '["10.0.0.0/8", "fd00::/8"]')
            parsed = tuple(_network(n, f"{where}, networks") for n in networks)
            try:
                address = parse_masquerade(entry["address"], "an IPv4 address or a DNS name")
            except Invalid as err:
                raise Invalid(f"{where}, address: {err}") from None
            if not address:
                raise Invalid(f"{where}, address: empty, expected an IPv4 address or DNS name")
            rules.append(AddressRule(parsed, address))
        return tuple(rules)

    return Kind(allowed, parse)


@dataclass(frozen=True)
class Setting:
    section: str
    name: str
    kind: Kind
    default: Any
    doc: str
    reloadable: bool = True

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"


SECTIONS: dict[str, str] = {
    "server": "Control connections, worker processes and limits.",
    "passive": "Passive mode (PASV/EPSV): the ports clients connect to for data.",
    "active": "Active mode (PORT/EPRT): the server connects to a port the client names.",
    "users": "Who may log in.",
    "security": "Brute-force defence: addresses with repeated failed logins are banned.",
    "anonymous": "Anonymous logins (USER anonymous or ftp, any password).",
    "uploads": "How uploaded files are written.",
    "tls": "FTPS (FTP over TLS). Without a certificate the server speaks plain FTP only.",
    "log": "Logging. Events go to stderr, which systemd sends to the journal.",
}

SETTINGS: tuple[Setting, ...] = (
    Setting("server", "listen", listen_kind(), ["0.0.0.0:21"],
            'Addresses for control connections; IPv6 as "[::]:21".'),
    Setting("server", "workers", workers_kind(), "auto",
            'Worker processes serving sessions; "auto" is one per CPU.'),
    Setting("server", "banner", text(200), "ftpd ready.",
            "Text of the 220 greeting (do not put the version here)."),
    Setting("server", "max_sessions", integer(1, 100000), 512,
            "Most concurrent sessions; more are refused with 421."),
    Setting("server", "max_sessions_per_ip", integer(0, 100000), 16,
            "Most concurrent sessions from one client address (0 = no limit)."),
    Setting("server", "max_sessions_per_user", integer(0, 100000), 0,
            "Most concurrent sessions of one user (0 = no limit)."),
    Setting("server", "idle_timeout", integer(0, 86400), 300,
            "Seconds a session may sit without a command before it is closed (0 = never)."),
    Setting("server", "shutdown_timeout", integer(0, 3600), 30,
            "Seconds stop and reload wait for sessions and transfers to finish."),
    Setting("server", "worker_timeout", integer(2, 3600), 30,
            "Seconds a worker may go without event-loop progress before it is replaced."),
    Setting("server", "user", text(64, r"[a-z_][a-z0-9_.-]*\$?", "a user name"), "ftpd",
            "Account the workers run as when started as root (root means no drop).",
            reloadable=False),
    Setting("server", "group", text(64, r"[a-z_][a-z0-9_.-]*\$?", "a group name"), "ftpd",
            "Group the workers run as when started as root.", reloadable=False),
    Setting("passive", "ports", port_range_kind(), "50000-50999",
            "Ports for passive data connections; open exactly these in the firewall."),
    Setting("passive", "address", masquerade_kind(), "",
            "Public address put in 227 replies when behind NAT (IPv4 or DNS name) for "
            "clients that address_map and local_direct do not cover."),
    Setting("passive", "address_map", address_map_kind(), [],
            "Per client network: the first entry whose networks contain the client's "
            "address decides the address in 227 replies (split horizon)."),
    Setting("passive", "local_direct", boolean(), True,
            "Clients on loopback or on this host's own subnets get the address they "
            "connected to instead of passive.address."),
    Setting("passive", "resolve_interval", integer(1, 86400), 300,
            "Seconds between lookups of DNS names in address/address_map (dynamic IPs); "
            "a failed lookup keeps the last address."),
    Setting("passive", "connect_timeout", integer(1, 600), 30,
            "Seconds a passive port waits for the client's data connection before 425."),
    Setting("active", "enabled", boolean(), True,
            "Allow PORT/EPRT; false answers them with 502 and a hint to use passive mode."),
    Setting("active", "connect_from_port_20", boolean(), False,
            "Connect from the control port minus one (20 for 21), as RFC 959 says; workers "
            "get that port from a small root helper, never by keeping root."),
    Setting("active", "allow_foreign_addresses", boolean(), False,
            "Allow data connections to/from addresses other than the client's (FXP); "
            "opens FTP bounce attacks."),
    Setting("active", "connect_timeout", integer(1, 600), 30,
            "Seconds to wait for the client to accept an active data connection before 425."),
    Setting("users", "file", path_kind(), "/etc/ftpd/users.toml",
            "Virtual users file, written by `ftpd passwd`."),
    Setting("users", "auth_cache_seconds", integer(0, 3600), 60,
            "Seconds a successful password check is remembered (keyed hash; 0 = never)."),
    Setting("users", "system", boolean(), False,
            "Let the accounts of this host log in too (names not in the users file), "
            'checked by PAM; needs isolation = "process".'),
    Setting("users", "isolation", choice("shared", "process"), "shared",
            '"shared": sessions share their worker process, confined in user space; '
            '"process": after login each session gets a process of its own, chroot(2)ed '
            "to the user's root and running as the user (system accounts) or as "
            "server.user (virtual users). Needs root."),
    Setting("users", "pam_service", text(64, r"[A-Za-z0-9_.+-]+", "a PAM service name"),
            "ftpd", "PAM service for system accounts: the stack in /etc/pam.d/<name>."),
    Setting("users", "deny_file", path_kind(optional=True), "/etc/ftpusers",
            'System accounts listed here (one name a line, # comments) may not log in; '
            'root never may ("" = no file).'),
    Setting("users", "system_permissions", text(10, r"[elradfmwMT]+",
                                                'permission letters from "elradfmwMT"'),
            "elradfmwMT", "Permissions of system accounts in their home (users file letters)."),
    Setting("security", "max_login_failures", integer(0, 1000), 5,
            "Failed logins from one address within failure_window that ban it (0 = never)."),
    Setting("security", "failure_window", integer(1, 86400), 600,
            "Seconds over which failed logins are counted."),
    Setting("security", "ban_time", integer(1, 604800), 900,
            "Seconds a banned address is refused (421) by every worker."),
    Setting("anonymous", "enabled", boolean(), False,
            "Allow anonymous logins, read-only except in upload_dir."),
    Setting("anonymous", "root", path_kind(optional=True), "/srv/ftp/anonymous",
            "Directory anonymous users see as /."),
    Setting("anonymous", "upload_dir", text(1024), "",
            'Directory under root (e.g. "incoming") where anonymous users may upload ("" = none).'),
    Setting("uploads", "umask", text(4, r"0?[0-7]{3}", 'an octal umask such as "022"'), "022",
            "Permissions removed from uploaded files and created directories."),
    Setting("uploads", "atomic", boolean(), False,
            "Write uploads under a temporary name, rename on success, delete on failure."),
    Setting("log", "level", choice("debug", "info", "warning", "error"), "info",
            "Least severe messages logged."),
    Setting("log", "stats_interval", integer(0, 86400), 60,
            "Seconds between data_channel_stats events (PASV/EPSV/PORT/EPRT use, 425s by "
            "cause), logged only when something happened (0 = never)."),
    Setting("log", "xferlog", path_kind(optional=True), "",
            'Transfer log in wu-ftpd xferlog format, e.g. "/var/log/ftpd/xferlog" ("" = off).'),
    Setting("log", "json", path_kind(optional=True), "",
            'Every event as a JSON line, e.g. "/var/log/ftpd/events.json" ("" = off).'),
    Setting("tls", "certificate", path_kind(optional=True), "",
            "PEM certificate chain, server certificate first; \"\" = no TLS. Read as root."),
    Setting("tls", "key", path_kind(optional=True), "",
            "PEM private key (unencrypted); \"\" = the key is in the certificate file."),
    Setting("tls", "min_version", choice("1.2", "1.3"), "1.2",
            "Oldest TLS version accepted."),
    Setting("tls", "max_version", choice("1.2", "1.3"), "1.3",
            'Newest TLS version offered; "1.2" works around clients that lose TLS 1.3 '
            "uploads (docs/tls.md)."),
    Setting("tls", "ciphers", text(1024, r"[A-Za-z0-9+:!@=_.-]+", "an OpenSSL cipher list"),
            "ECDHE+AESGCM:ECDHE+CHACHA20",
            "OpenSSL cipher list for TLS 1.2 (TLS 1.3 always uses its AEAD suites)."),
    Setting("tls", "require", choice("none", "login", "all"), "none",
            'Plain FTP allowed ("none"), logins only over TLS ("login"), or logins and '
            'data connections ("all"); users.toml can override per user.'),
    Setting("tls", "session_reuse", choice("require", "warn", "off"), "require",
            "Data connections must resume the TLS session of their control connection "
            "(stops data-connection theft); \"warn\" only logs."),
    Setting("tls", "implicit_listen", listen_kind(allow_empty=True), [],
            'Addresses for implicit FTPS (TLS from the first byte), e.g. ["0.0.0.0:990"].'),
    Setting("tls", "handshake_timeout", integer(1, 300), 30,
            "Seconds a client may take to finish a TLS handshake before it is disconnected."),
)

BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}

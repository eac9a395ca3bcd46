"""Loopback guard: the benchmark sends traffic to this machine's loopback and nowhere else."""

from __future__ import annotations

import ipaddress
import socket


class NotLoopbackError(ValueError):
    """Raised when a benchmark target is not a loopback address."""


def is_loopback_literal(host: str) -> bool:
    """True for an IP literal in 127.0.0.0/8 or ::1 (brackets allowed around IPv6)."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def require_loopback(host: str) -> str:
    """Return `host` as a bare IP literal if it is loopback, else raise NotLoopbackError.

    Names are resolved and every address they map to must be loopback: a name that
    could also reach another machine is refused.
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if is_loopback_literal(text):
        return str(ipaddress.ip_address(text))
    try:
        infos = socket.getaddrinfo(text, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise NotLoopbackError(f"{host!r} does not resolve: {exc}") from None
    addresses = sorted({str(info[4][0]) for info in infos})
    if not addresses or not all(is_loopback_literal(a) for a in addresses):
        raise NotLoopbackError(
            f"refusing to benchmark {host!r} ({', '.join(addresses) or 'no address'}): "
            "only loopback (127.0.0.0/8, ::1) is allowed"
        )
    return addresses[0]


def url_host(host: str) -> str:
    """The host as it goes into a URL (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host

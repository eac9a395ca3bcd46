"""This host's interface addresses, from libc's getifaddrs().

The NAT logic needs each interface's addresses and netmasks, which the
standard library does not give. psutil does, but importing it costs every
daemon process about 2.5 MiB that the workers never use again (bench/
RESULTS.md, memory), so the daemon reads them through ctypes. The records
have psutil.net_if_addrs()'s shape (family, address, netmask), which the
callers and their tests use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import socket
from typing import NamedTuple


class InterfaceAddress(NamedTuple):
    family: int
    address: str
    netmask: str | None


class _IfAddrs(ctypes.Structure):
    pass


_IfAddrs._fields_ = [
    ("ifa_next", ctypes.POINTER(_IfAddrs)),
    ("ifa_name", ctypes.c_char_p),
    ("ifa_flags", ctypes.c_uint),
    ("ifa_addr", ctypes.c_void_p),
    ("ifa_netmask", ctypes.c_void_p),
    ("ifa_ifu", ctypes.c_void_p),
    ("ifa_data", ctypes.c_void_p),
]

# Where the address bytes sit in sockaddr_in / sockaddr_in6, and how many.
_LAYOUT = {socket.AF_INET: (4, 4), socket.AF_INET6: (8, 16)}


def _ip(sockaddr: int | None) -> tuple[int, str] | None:
    if not sockaddr:
        return None
    family = ctypes.c_ushort.from_address(sockaddr).value  # sa_family comes first
    if family not in _LAYOUT:
        return None
    offset, size = _LAYOUT[family]
    return family, socket.inet_ntop(family, ctypes.string_at(sockaddr + offset, size))


@functools.cache  # find_library() runs ldconfig: once per process, not per refresh
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def net_if_addrs() -> dict[str, list[InterfaceAddress]]:
    """{interface name: [InterfaceAddress, ...]} for IPv4 and IPv6; OSError on failure."""
    libc = _libc()
    head = ctypes.POINTER(_IfAddrs)()
    if libc.getifaddrs(ctypes.byref(head)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"getifaddrs: {errno}")
    found: dict[str, list[InterfaceAddress]] = {}
    try:
        node = head
        while node:
            entry = node.contents
            address = _ip(entry.ifa_addr)
            if address is not None:
                family, text = address
                mask = _ip(entry.ifa_netmask)
                name = (entry.ifa_name or b"?").decode(errors="replace")
                found.setdefault(name, []).append(
                    InterfaceAddress(family, text, mask[1] if mask else None))
            node = entry.ifa_next
    finally:
        libc.freeifaddrs(head)
    return found

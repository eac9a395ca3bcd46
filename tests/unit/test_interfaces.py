"""ftpd.interfaces reads the same addresses as psutil (which the daemon no longer loads)."""

from __future__ import annotations

import socket

import psutil

from ftpd import interfaces


def test_addresses_and_netmasks_match_psutil():
    expected = {}
    for name, entries in psutil.net_if_addrs().items():
        rows = [(int(e.family), e.address.split("%", 1)[0], e.netmask) for e in entries
                if e.family in (socket.AF_INET, socket.AF_INET6)]
        if rows:
            expected[name] = rows
    ours = {name: [(e.family, e.address, e.netmask) for e in entries]
            for name, entries in interfaces.net_if_addrs().items()}
    assert ours == expected
    assert (socket.AF_INET, "127.0.0.1", "255.0.0.0") in ours["lo"]

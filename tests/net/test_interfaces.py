"""The interface list the NAT logic uses, against `ip addr` inside a lab host,
including a secondary address on one interface."""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path

import ftpd

SOURCE = str(Path(ftpd.__file__).parent.parent)
LIST = ("import json, ipaddress; from ftpd import interfaces; print(json.dumps(sorted("
        "[n, e.address, bin(int(ipaddress.ip_address(e.netmask))).count('1')] "
        "for n, es in interfaces.net_if_addrs().items() for e in es)))")


def test_matches_ip_addr_with_a_secondary_address(lab):
    shown = json.loads(lab.run("srv", "ip", "-j", "addr", "show", check=True).stdout)
    device = next(link["ifname"] for link in shown if link["ifname"] != "lo")
    lab.run("srv", "ip", "addr", "add", "10.200.99.1/16", "dev", device, check=True)
    try:
        shown = json.loads(lab.run("srv", "ip", "-j", "addr", "show", check=True).stdout)
        expected = sorted([link["ifname"], str(ipaddress.ip_address(a["local"])), a["prefixlen"]]
                          for link in shown for a in link.get("addr_info", ()))
        ours = json.loads(lab.run("srv", "env", f"PYTHONPATH={SOURCE}", sys.executable, "-c",
                                  LIST, check=True).stdout)
        assert ours == expected
        assert [device, "10.200.99.1", 16] in ours
    finally:
        lab.run("srv", "ip", "addr", "del", "10.200.99.1/16", "dev", device)

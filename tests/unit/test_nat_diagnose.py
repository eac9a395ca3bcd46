"""The NAT/firewall self-diagnosis and the [passive]/[active] settings' errors."""

from __future__ import annotations

import socket
from collections import namedtuple
from pathlib import Path

import pytest

from ftpd import config, diagnose

Addr = namedtuple("Addr", "family address netmask broadcast ptp")
PRIVATE_HOST = {"lo": [Addr(socket.AF_INET, "127.0.0.1", "255.0.0.0", None, None)],
                "eth0": [Addr(socket.AF_INET, "10.0.0.5", "255.255.255.0", None, None)]}
PUBLIC_HOST = {"eth0": [Addr(socket.AF_INET, "10.0.0.5", "255.255.255.0", None, None),
                        Addr(socket.AF_INET, "151.101.1.5", "255.255.255.0", None, None)]}


def load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "ftpd.toml"
    path.write_text(text)
    return config.load(str(path))


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(config.ConfigError) as err:
        load(tmp_path, text)
    return "\n".join(str(p) for p in err.value.problems)


@pytest.fixture
def sysctls(tmp_path: Path) -> Path:
    directory = tmp_path / "sys"
    directory.mkdir()
    (directory / "ip_local_port_range").write_text("32768\t60999\n")
    (directory / "ip_local_reserved_ports").write_text("\n")
    return directory


def run(cfg: config.Config, sysctls: Path, interfaces=PRIVATE_HOST, euid: int = 0,  # type: ignore[no-untyped-def]
        caps: int = 0, probe: bool = False) -> str:
    return "\n".join(diagnose.warnings(cfg, probe, interfaces=interfaces,
                                       sysctl_dir=str(sysctls), euid=euid, capabilities=caps))


def test_private_addresses_without_masquerade(tmp_path: Path, sysctls: Path) -> None:
    cfg = load(tmp_path, '[passive]\nports = "61000-61009"\n')
    found = run(cfg, sysctls)
    assert "passive.address is not set and this server's addresses (10.0.0.5) are private" \
        in found
    assert "forward passive.ports (61000-61009)" in found
    assert run(cfg, sysctls, interfaces=PUBLIC_HOST) == ""  # reachable as it is
    loopback = load(tmp_path, '[server]\nlisten = ["127.0.0.1:2121"]\n'
                              '[passive]\nports = "61000-61009"\n')
    assert run(loopback, sysctls) == ""  # a test set-up, not a NAT problem


def test_private_masquerade_address(tmp_path: Path, sysctls: Path) -> None:
    cfg = load(tmp_path, '[passive]\nports = "61000-61009"\naddress = "192.168.1.1"\n')
    found = run(cfg, sysctls)
    assert "passive.address: 192.168.1.1 is not a public address" in found
    assert "list their networks in passive.address_map instead" in found
    public = load(tmp_path, '[passive]\nports = "61000-61009"\naddress = "151.101.1.5"\n')
    assert run(public, sysctls) == ""


def test_ephemeral_overlap_suggests_reserving_the_range(tmp_path: Path, sysctls: Path) -> None:
    cfg = load(tmp_path, '[passive]\nports = "50000-50999"\naddress = "151.101.1.5"\n')
    found = run(cfg, sysctls)
    assert "50000-50999 overlaps the kernel's ephemeral port range 32768-60999" in found
    assert "`sysctl -w net.ipv4.ip_local_reserved_ports=50000-50999`" in found
    (sysctls / "ip_local_reserved_ports").write_text("8080\n")
    assert "ip_local_reserved_ports=8080,50000-50999`" in run(cfg, sysctls)
    (sysctls / "ip_local_reserved_ports").write_text("8080,49000-51000\n")
    assert run(cfg, sysctls) == ""  # already reserved


def test_unbindable_passive_ports_are_named(tmp_path: Path, sysctls: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        cfg = load(tmp_path, f'[server]\nlisten = ["127.0.0.1:2121"]\nworkers = 1\n'
                             f'[passive]\nports = "{port}-{port}"\n')
        found = run(cfg, sysctls, probe=True)
        assert f"1 of 1 ports cannot be bound on 127.0.0.1: {port} (in use)" in found
        assert "PASV and EPSV will all fail with 425" in found
        assert f"`ss -tanp '( sport = :{port} )'`" in found
        assert "cannot be bound" not in run(cfg, sysctls, probe=False)
    finally:
        holder.close()


def test_port_20_needs_root_or_the_capability(tmp_path: Path, sysctls: Path) -> None:
    cfg = load(tmp_path, '[server]\nlisten = ["127.0.0.1:21"]\n[passive]\nports = "61000-61009"\n'
                         '[active]\nconnect_from_port_20 = true\n')
    assert "needs" not in run(cfg, sysctls, euid=0)
    found = run(cfg, sysctls, euid=1000)
    assert "must come from port 20, below 1024, but ftpd runs as uid 1000" in found
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in found
    assert run(cfg, sysctls, euid=1000, caps=1 << diagnose.CAP_NET_BIND_SERVICE) == ""
    high = load(tmp_path, '[server]\nlisten = ["127.0.0.1:2121"]\n'
                          '[passive]\nports = "61000-61009"\n'
                          '[active]\nconnect_from_port_20 = true\n')
    assert run(high, sysctls, euid=1000) == ""  # 2120 needs no privilege
    isolated = load(tmp_path, '[server]\nlisten = ["127.0.0.1:21"]\n'
                              '[passive]\nports = "61000-61009"\n[users]\nisolation = "process"\n'
                              '[active]\nconnect_from_port_20 = true\n')
    assert 'does not work with users.isolation = "process"' in run(isolated, sysctls, euid=0)


def test_config_warnings_include_the_diagnosis(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[passive]\nports = "61000-61009"\naddress = "10.1.1.1"\n')
    found = config.warnings(cfg)
    assert any("fewer than server.max_sessions" in w and "`ftpd firewall`" in w for w in found)
    assert any("10.1.1.1 is not a public address" in w for w in found)


@pytest.mark.parametrize(("text", "needle"), [
    ('[passive]\naddress = "::1"\n', "227 replies carry only IPv4"),
    ('[passive]\naddress = "300.1.2.3"\n', "'300.1.2.3' is not a valid IPv4 address"),
    ('[passive]\naddress = "bad_name!"\n', "is not an IPv4 address or a DNS name"),
    ('[passive]\naddress_map = [{ networks = ["10.0.0.1/8"], address = "10.0.0.5" }]\n',
     'passive.address_map: entry 1, networks: \'10.0.0.1/8\' has host bits set; did you mean '
     '"10.0.0.0/8"?'),
    ('[passive]\naddress_map = [{ networks = [], address = "10.0.0.5" }]\n',
     "entry 1: networks must be a non-empty list"),
    ('[passive]\naddress_map = [{ networks = ["10.0.0.0/8"] }]\n', "entry 1: address is missing"),
    ('[passive]\naddress_map = [{ networks = ["10.0.0.0/8"], address = "fd00::5" }]\n',
     "entry 1, address: 'fd00::5' is an IPv6 address"),
    ('[passive]\naddress_map = [{ networks = ["10.0.0.0/8"], address = "x", via = 1 }]\n',
     "entry 1: unknown key(s) via"),
    ('[passive]\naddress_map = "10.0.0.0/8=10.0.0.5"\n', "expected a list of tables"),
    ('[[passive.address_map]]\nnetworks = ["10.0.0.0/8"]\naddress = "10.0.0.5"\n'
     '[[passive.address_map]]\nnetworks = ["nonsense"]\naddress = "10.0.0.6"\n',
     "entry 2, networks: 'nonsense' is not a network"),
    ('[active]\nenabled = "yes"\n', "active.enabled: got 'yes', expected true or false"),
    ('[passive]\nresolve_interval = 0\n', "passive.resolve_interval: 0 is out of range"),
])
def test_clear_errors_for_bad_nat_settings(tmp_path: Path, text: str, needle: str) -> None:
    assert needle in problems(tmp_path, text)


def test_address_map_in_both_toml_spellings(tmp_path: Path) -> None:
    inline = load(tmp_path, '[passive]\naddress_map = [{ networks = ["10.0.0.0/8", "fd00::/8"],'
                            ' address = "10.0.0.5" }]\n')
    tables = load(tmp_path, '[[passive.address_map]]\nnetworks = ["10.0.0.0/8", "fd00::/8"]\n'
                            'address = "10.0.0.5"\n')
    assert inline.passive.address_map == tables.passive.address_map
    [entry] = inline.passive.address_map
    assert [str(n) for n in entry.networks] == ["10.0.0.0/8", "fd00::/8"]
    assert entry.address == "10.0.0.5"

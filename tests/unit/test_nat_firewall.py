"""`ftpd firewall`: exactly the configured ports, the helper, the TLS caveat."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from ftpd import cli, config, firewall
from ftpd.settings import Endpoint

BASE = '[server]\nlisten = {listen}\n[passive]\nports = "50000-50099"\n'


def load(tmp_path: Path, listen: str = '["0.0.0.0:21"]', extra: str = "") -> config.Config:
    path = tmp_path / "ftpd.toml"
    path.write_text(BASE.format(listen=listen) + extra)
    return config.load(str(path))


def test_nft_opens_exactly_the_control_and_passive_ports(tmp_path: Path) -> None:
    out = firewall.render(load(tmp_path, '["0.0.0.0:21", "[::]:2121"]'), "nft")
    assert 'tcp dport { 21, 2121 } ct state new accept comment "ftpd control"' in out
    assert 'tcp dport 50000-50099 ct state new accept comment "ftpd passive data"' in out
    assert 'tcp dport { 21, 2121 } ct helper set "ftp"' in out
    assert "cannot read TLS-protected (FTPS) control connections" in out
    numbers = {int(n) for n in re.findall(r"\b(\d{2,5})\b", "\n".join(
        line for line in out.splitlines() if not line.lstrip().startswith("#")))}
    assert numbers == {21, 2121, 50000, 50099}  # nothing else is opened


def test_no_helper_when_active_mode_is_off(tmp_path: Path) -> None:
    cfg = load(tmp_path, extra="[active]\nenabled = false\n")
    for fmt in firewall.FORMATS:
        out = firewall.render(cfg, fmt)
        assert "helper set" not in out and "--helper" not in out and "add-helper" not in out
        assert "Active mode is disabled" in out


def test_iptables_covers_each_family_in_use(tmp_path: Path) -> None:
    out = firewall.render(load(tmp_path), "iptables")
    assert ("iptables -I INPUT -p tcp -m multiport --dports 21 -m conntrack --ctstate NEW "
            '-j ACCEPT -m comment --comment "ftpd control"') in out
    assert "iptables -I INPUT -p tcp --dport 50000:50099 -m conntrack --ctstate NEW" in out
    assert "iptables -t raw -A PREROUTING -p tcp -m multiport --dports 21 -j CT --helper ftp" \
        in out
    assert "ip6tables" not in out
    dual = firewall.render(load(tmp_path, '["[::]:21"]'), "iptables")  # dual-stack
    assert "\niptables -I INPUT" in dual and "\nip6tables -I INPUT" in dual


def test_firewalld_service_with_a_helper_on_the_real_port(tmp_path: Path) -> None:
    out = firewall.render(load(tmp_path, '["0.0.0.0:2121"]'), "firewalld")
    assert "firewall-cmd --permanent --service=ftpd --add-port=2121/tcp" in out
    assert "firewall-cmd --permanent --service=ftpd --add-port=50000-50099/tcp" in out
    assert "--new-helper=ftpd-ftp --module=nf_conntrack_ftp" in out
    assert "firewall-cmd --permanent --helper=ftpd-ftp --add-port=2121/tcp" in out
    assert "firewall-cmd --permanent --service=ftpd --add-helper=ftpd-ftp" in out
    assert out.rstrip().endswith("firewall-cmd --reload")


def test_implicit_ftps_ports_are_opened_but_get_no_helper(tmp_path: Path) -> None:
    # A real [tls] implicit_listen needs a certificate; the rules only read the endpoints.
    cfg = load(tmp_path)
    cfg.sections["tls"] = SimpleNamespace(implicit_listen=(Endpoint("0.0.0.0", 990),))
    opened = firewall.openings(cfg)
    assert (opened.control, opened.plain) == ((21, 990), (21,))
    out = firewall.render(cfg, "nft")
    assert "tcp dport { 21, 990 } ct state new accept" in out
    assert 'tcp dport { 21 } ct helper set "ftp"' in out


def test_cli_prints_the_rules(tmp_path: Path, capsys) -> None:
    load(tmp_path)
    assert cli.main(["firewall", "-c", str(tmp_path / "ftpd.toml"), "--format",
                     "iptables"]) == 0
    assert "--dport 50000:50099" in capsys.readouterr().out
    (tmp_path / "bad.toml").write_text('[passive]\nports = "1-2"\n')
    assert cli.main(["firewall", "-c", str(tmp_path / "bad.toml")]) == 1
    assert "passive.ports" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("nft") is None or shutil.which("unshare") is None
                    or os.geteuid() != 0, reason="needs nft, unshare and root")
@pytest.mark.parametrize("listen", ['["0.0.0.0:21"]', '["0.0.0.0:21", "[::]:2121"]'])
@pytest.mark.parametrize("active", ["true", "false"])
def test_nft_output_is_accepted_by_nft(tmp_path: Path, listen: str, active: str) -> None:
    rules = tmp_path / "ftpd.nft"
    rules.write_text(firewall.render(load(tmp_path, listen, f"[active]\nenabled = {active}\n"),
                                     "nft"))
    # In a throw-away network namespace: checked against an empty ruleset, and against
    # a typical one whose input chain drops by default (its policy must survive).
    base = tmp_path / "base.nft"
    base.write_text("table inet filter {\n chain input {\n  type filter hook input priority "
                    "filter; policy drop;\n  ct state established,related accept\n }\n}\n")
    script = (f"nft -c -f {rules} && nft -f {base} && nft -f {rules} && "
              "nft list chain inet filter input")
    out = subprocess.run(["unshare", "--net", "sh", "-c", script], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "policy drop;" in out.stdout and "ftpd passive data" in out.stdout

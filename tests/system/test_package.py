"""The .deb installed in a fresh Debian: what postinst did, the units as
installed, and the sandbox letting ftpd do what it needs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import Ftpd
from .container import REPO, Container

pytestmark = pytest.mark.system

PROBE = r'''
import os, pwd, socket, sys
from OpenSSL import SSL
from ftpd import interfaces
from systemd import journal

# pyOpenSSL callbacks are cffi closures in W+X memory: the reason the unit
# does not set MemoryDenyWriteExecute=yes.
ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
ctx.set_verify(SSL.VERIFY_PEER, lambda *args: True)
ctx.set_tlsext_servername_callback(lambda conn: None)
# RestrictAddressFamilies=: interface addresses (getifaddrs: netlink), journald (unix).
assert interfaces.net_if_addrs()["lo"]
journal.send("probe journal", FTP_EVENT="probe")
# CapabilityBoundingSet=: port 21, chroot + setuid in a child, signalling it.
with socket.create_server(("0.0.0.0", 21)):
    pass
ftpd = pwd.getpwnam("ftpd")
read_end, write_end = os.pipe()
child = os.fork()
if child == 0:
    os.chroot("/srv/ftp")
    os.setgroups([])
    os.setgid(ftpd.pw_gid)
    os.setuid(ftpd.pw_uid)
    os.read(read_end, 1)
    os._exit(0 if os.getuid() == ftpd.pw_uid else 1)
os.kill(child, 0)
os.write(write_end, b"x")
_, status = os.waitpid(child, 0)
assert os.waitstatus_to_exitcode(status) == 0
print("probe ok", flush=True)
'''

DROPPED_FOR_PROBE = ("Type=", "ExecStart=", "ExecReload=", "WatchdogSec=", "Restart",
                     "NotifyAccess=")


def test_install_enables_but_does_not_start(booted_container: Container) -> None:
    facts = booted_container.facts
    assert facts["after_install.UnitFileState"] == "enabled"
    assert facts["after_install.ActiveState"] == "inactive"
    assert facts["after_install.InvocationID"] == "", "the service ran during installation"
    socket = booted_container.show("ftpd.socket", "UnitFileState")
    assert socket == "disabled"


def test_user_and_directories(booted_container: Container) -> None:
    c = booted_container
    entry = c.run("getent", "passwd", "ftpd").stdout.strip().split(":")
    assert entry[0] == "ftpd" and int(entry[2]) < 1000
    assert entry[6] == "/usr/sbin/nologin"
    stat = c.run("stat", "-c", "%n %a %U %G", "/var/log/ftpd", "/srv/ftp").stdout.splitlines()
    assert stat == ["/var/log/ftpd 2770 root ftpd", "/srv/ftp 755 root root"]
    shipped = c.run("cat", "/etc/ftpd/ftpd.toml").stdout
    assert shipped == (REPO / "etc" / "ftpd" / "ftpd.toml").read_text()
    conffiles = c.run("dpkg-query", "-W", "-f=${Conffiles}", "ftpd").stdout
    for path in ("/etc/ftpd/ftpd.toml", "/etc/logrotate.d/ftpd", "/etc/pam.d/ftpd",
                 "/etc/fail2ban/jail.d/ftpd.conf"):
        assert path in conffiles


def test_version(booted_container: Container) -> None:
    init = (REPO / "ftpd" / "__init__.py").read_text()
    match = re.search(r'__version__ = "([^"]+)"', init)
    assert match
    assert booted_container.run("ftpd", "--version").stdout.strip() == f"ftpd {match.group(1)}"


def test_installed_units_verify(booted_container: Container) -> None:
    """With the real /usr/bin/ftpd present: no temporary root needed."""
    result = booted_container.run("systemd-analyze", "verify", "ftpd.service", "ftpd.socket",
                                  check=False)
    assert result.stdout + result.stderr == ""


def test_installed_exposure(booted_container: Container) -> None:
    out = booted_container.run("systemd-analyze", "security", "--no-pager",
                               "ftpd.service").stdout
    match = re.search(r"Overall exposure level for ftpd\.service: (\d+\.\d+)", out)
    assert match, out
    assert float(match.group(1)) <= 3.0


def test_logrotate_config_parses(booted_container: Container) -> None:
    result = booted_container.run("logrotate", "--debug", "/etc/logrotate.d/ftpd",
                                  check=False)
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr.lower(), result.stderr


def test_sandbox_allows_what_ftpd_needs(ftpd: Ftpd) -> None:
    """A oneshot with ftpd.service's sandbox runs a probe of the risky settings."""
    c = ftpd.container
    unit = c.run("cat", "/lib/systemd/system/ftpd.service").stdout
    lines = []
    for line in unit.splitlines():
        if line.startswith("[Install]"):
            break
        if not line.startswith(DROPPED_FOR_PROBE):
            lines.append(line)
        if line == "[Service]":
            lines += ["Type=oneshot",
                      "ExecStart=/usr/lib/ftpd/venv/bin/python /etc/ftpd/sandbox-probe.py"]
    c.write("/etc/ftpd/sandbox-probe.py", PROBE)
    c.write("/etc/systemd/system/ftpd-sandbox-probe.service", "\n".join(lines) + "\n")
    try:
        c.systemctl("daemon-reload")
        result = c.systemctl("start", "ftpd-sandbox-probe.service", check=False, timeout=60)
        log = c.journal("-u", "ftpd-sandbox-probe.service")
        assert result.returncode == 0, log
        assert "probe ok" in log
    finally:
        c.run("rm", "-f", "/etc/systemd/system/ftpd-sandbox-probe.service",
              "/etc/ftpd/sandbox-probe.py")
        c.systemctl("daemon-reload")


def test_upgrade_remove_purge(rootfs: Path, ftpd_deb: Path) -> None:
    """In a container of its own: an upgrade restarts a running service and
    keeps an admin's choice; remove stops it; purge cleans up."""
    with Container(rootfs, binds_ro={ftpd_deb.parent: "/mnt/dist"}) as c:
        c.boot()
        c.wait_until_running()
        c.run("apt-get", "install", "-y", f"/mnt/dist/{ftpd_deb.name}",
              env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=120)
        c.sh("install -d -o ftpd -g ftpd /srv/ftp/bob")
        c.run("ftpd", "passwd", "-f", "/etc/ftpd/users.toml", "bob", "--root", "/srv/ftp/bob",
              input="a password\n")
        c.systemctl("start", "ftpd.service")
        old_pid = c.show("ftpd.service", "MainPID")
        # Installing over itself runs postinst with the old version, as an upgrade.
        c.run("dpkg", "-i", f"/mnt/dist/{ftpd_deb.name}", timeout=120)
        assert c.show("ftpd.service", "ActiveState") == "active"
        assert c.show("ftpd.service", "MainPID") not in (old_pid, "0")
        c.systemctl("disable", "ftpd.service")
        c.run("dpkg", "-i", f"/mnt/dist/{ftpd_deb.name}", timeout=120)
        assert c.show("ftpd.service", "UnitFileState") == "disabled"
        c.run("apt-get", "remove", "-y", "ftpd", env={"DEBIAN_FRONTEND": "noninteractive"},
              timeout=120)
        assert c.systemctl("is-active", "ftpd.service", check=False).stdout.strip() != "active"
        assert c.run("test", "-e", "/usr/bin/ftpd", check=False).returncode != 0
        assert c.run("test", "-e", "/etc/ftpd/users.toml", check=False).returncode == 0
        c.run("apt-get", "purge", "-y", "ftpd", env={"DEBIAN_FRONTEND": "noninteractive"},
              timeout=120)
        for gone in ("/etc/ftpd", "/var/log/ftpd",
                     "/etc/systemd/system/multi-user.target.wants/ftpd.service"):
            assert c.run("test", "-e", gone, check=False).returncode != 0, gone
        # Data and the account stay (Debian policy: never delete users' files).
        assert c.run("test", "-d", "/srv/ftp/bob", check=False).returncode == 0
        assert c.run("getent", "passwd", "ftpd", check=False).returncode == 0

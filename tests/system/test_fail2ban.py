"""fail2ban's filter and jail for ftpd (etc/fail2ban/).

data/ftpd-auth.log holds lines the real daemon wrote (ftpd 0.1.0, systemd 252):
the first seven from the journal (`journalctl -o short-iso`), the last three
from stderr outside systemd (with ftpd's own timestamp). Three failed logins
use user names crafted to smuggle `remote_addr=203.0.113.x` into the line;
the filter must ban only the real client, 127.0.0.1. Replace or extend the
file when the log format changes.

The first tests need only fail2ban-regex on the host; the last one runs the
daemon in the container and feeds its journal to the filter.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .conftest import Ftpd
from .container import REPO

FILTER = REPO / "etc" / "fail2ban" / "filter.d" / "ftpd.conf"
JAIL = REPO / "etc" / "fail2ban" / "jail.d" / "ftpd.conf"
SAMPLES = Path(__file__).resolve().parent / "data" / "ftpd-auth.log"

needs_fail2ban = pytest.mark.skipif(shutil.which("fail2ban-regex") is None,
                                    reason="fail2ban not installed (apt-get install fail2ban)")


def banned(log: Path, filter_file: Path) -> list[str]:
    """The address fail2ban-regex extracts from each matching line."""
    result = subprocess.run(["fail2ban-regex", "-o", "ip", str(log), str(filter_file)],
                            capture_output=True, text=True, timeout=60, check=True,
                            cwd=log.parent)
    return result.stdout.split()


@needs_fail2ban
def test_filter_matches_failed_logins_only() -> None:
    assert banned(SAMPLES, FILTER) == ["127.0.0.1"] * 5


@needs_fail2ban
def test_samples_would_fool_a_naive_filter(tmp_path: Path) -> None:
    """The crafted user names in the samples are real attacks on a looser regex."""
    naive = tmp_path / "naive.conf"
    naive.write_text("[Definition]\nfailregex = event=login_failed .*?remote_addr=<ADDR>\n")
    assert any(ip.startswith("203.0.113.") for ip in banned(SAMPLES, naive))


@needs_fail2ban
def test_jail_is_disabled_and_valid_when_enabled(tmp_path: Path) -> None:
    confdir = tmp_path / "fail2ban"
    shutil.copytree("/etc/fail2ban", confdir)
    for path in (confdir / "jail.d").iterdir():
        path.unlink()  # the distribution's sshd jail needs its log file
    shutil.copy(FILTER, confdir / "filter.d" / "ftpd.conf")
    shutil.copy(JAIL, confdir / "jail.d" / "ftpd.conf")

    def client(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["fail2ban-client", "-c", str(confdir), *args],
                              capture_output=True, text=True, timeout=60, check=False)

    assert "'ftpd'" not in client("-d").stdout
    (confdir / "jail.d" / "ftpd.local").write_text("[ftpd]\nenabled = true\n")
    assert "['add', 'ftpd', 'systemd']" in client("-d").stdout
    result = client("-t")
    assert result.returncode == 0, result.stdout + result.stderr


def _host_has_python_systemd() -> bool:
    """fail2ban-regex runs under /usr/bin/python3; its journal reader needs python3-systemd."""
    probe = subprocess.run(["/usr/bin/python3", "-c", "import systemd.journal"],
                           capture_output=True, check=False)
    return probe.returncode == 0


@needs_fail2ban
@pytest.mark.system
def test_filter_matches_daemon_journal(ftpd: Ftpd) -> None:
    """The jail's view: fail2ban-regex reads the container's journal files with
    the filter's journalmatch, as backend = systemd does."""
    if not _host_has_python_systemd():
        pytest.skip("python3-systemd not installed (apt-get install python3-systemd)")
    ftpd.start()
    user, password = ftpd.login_args()
    assert ftpd.client("login", user, password)["event"] == "done"
    failed = ftpd.client("badlogin", user, "wrong password", "2")
    assert failed == {"event": "done", "failures": 2}
    c = ftpd.container
    c.run("journalctl", "--sync")
    journal_dir = f"/proc/{c.leader}/root/var/log/journal"
    files = sorted(str(p) for p in Path(journal_dir).glob("*/system.journal"))
    assert len(files) == 1, f"expected one system journal under {journal_dir}: {files}"
    source = f"systemd-journal[journalfiles={files[0]}]"
    matched = subprocess.run(["fail2ban-regex", "-o", "ip", source, str(FILTER)],
                             capture_output=True, text=True, timeout=60, check=True,
                             cwd=tempfile.gettempdir()).stdout.split()
    # At least this test's two failures (earlier tests may have added more).
    assert len(matched) >= 2, "the filter matched no failed login in the journal"
    assert set(matched) == {"127.0.0.1"}

"""A daemon without TLS never maps OpenSSL, and no daemon maps psutil (both cost
every process megabytes it never uses); turning TLS on needs a restart."""

from __future__ import annotations

import signal
from pathlib import Path


def mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_no_openssl_without_tls(make_daemon):
    daemon = make_daemon()
    client = daemon.ftp()
    client.nlst()
    client.quit()
    for pid in [daemon.proc.pid, *(w.pid for w in daemon.workers())]:
        maps = mapped(pid)
        assert "libssl" not in maps and "cryptography" not in maps, pid
        assert "psutil" not in maps, pid  # interfaces come from getifaddrs() instead


def test_enabling_tls_by_reload_is_refused_with_the_fix(make_daemon, tmp_path):
    daemon = make_daemon()
    daemon.write_config(tls={"certificate": str(tmp_path / "cert.pem"),
                             "key": str(tmp_path / "key.pem")})
    daemon.signal(signal.SIGHUP)
    log = daemon.wait_log(r"reload failed")
    assert "tls.certificate" in log and "needs a restart" in log
    daemon.ftp().quit()

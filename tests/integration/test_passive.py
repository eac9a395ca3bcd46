"""Passive mode: ports stay in the configured range, masquerade, exhaustion."""

from __future__ import annotations

import concurrent.futures
import ftplib
import io
import re
import shutil
import subprocess

import pytest

from tests.conftest import PASSWORD


def _port_of(reply: str) -> int:
    if reply.startswith("229"):
        return int(re.search(r"\|\|\|(\d+)\|", reply).group(1))  # type: ignore[union-attr]
    numbers = re.search(r"\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)", reply)
    assert numbers, reply
    return int(numbers.group(5)) * 256 + int(numbers.group(6))


def test_every_passive_port_is_inside_the_range(make_daemon):
    daemon = make_daemon(workers=2, passive_size=6)
    (daemon.root / "f").write_bytes(b"x" * 1000)
    seen = set()
    for _ in range(3):
        client = daemon.ftp()
        for _ in range(10):
            for command in ("PASV", "EPSV"):
                seen.add(_port_of(client.sendcmd(command)))
            out = io.BytesIO()
            client.retrbinary("RETR f", out.write)  # uses a fresh PASV/EPSV each time
            assert len(out.getvalue()) == 1000
        client.quit()
    assert seen <= set(daemon.passive), seen - set(daemon.passive)


def test_masquerade_address_in_227_and_epsv_still_works(make_daemon):
    # local_direct would give a loopback client the address it dialled.
    daemon = make_daemon(passive={"address": "192.0.2.10", "local_direct": False})
    client = daemon.ftp()
    reply = client.sendcmd("PASV")
    assert "(192,0,2,10," in reply
    assert client.sendcmd("EPSV").startswith("229")
    assert client.nlst() == []  # ftplib uses EPSV-less PASV but ignores the 227 host
    client.quit()


def test_masquerade_hostname_is_resolved_at_start(make_daemon):
    daemon = make_daemon(passive={"address": "localhost", "local_direct": False})
    client = daemon.ftp()
    assert "(127,0,0,1," in client.sendcmd("PASV")
    client.quit()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_trusting_the_227_address(make_daemon, tmp_path):
    daemon = make_daemon(passive={"address": "127.0.0.1"})
    (daemon.root / "f.txt").write_text("via 227\n")
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "15", "--disable-epsv", "--no-ftp-skip-pasv-ip",
         f"ftp://alice:{PASSWORD}@127.0.0.1:{daemon.port}/f.txt"],
        check=True, capture_output=True, text=True).stdout
    assert out == "via 227\n"


def test_exhausted_range_gives_425_and_session_continues(make_daemon):
    daemon = make_daemon(workers=1, passive_size=1)
    holder = daemon.ftp()
    port = _port_of(holder.sendcmd("PASV"))
    assert port == daemon.passive.start
    other = daemon.ftp()
    with pytest.raises(ftplib.error_temp, match="425"):
        other.sendcmd("PASV")
    with pytest.raises(ftplib.error_temp, match="425"):
        other.sendcmd("EPSV")
    assert other.voidcmd("NOOP").startswith("200")
    holder.quit()  # its passive listener is closed: the port returns to the pool
    assert _port_of(other.sendcmd("PASV")) == port
    other.quit()
    assert "event=passive_exhausted" in daemon.log()


def test_fifty_concurrent_sessions_use_at_least_two_workers(make_daemon):
    daemon = make_daemon(workers=2, passive_size=120, server={"max_sessions_per_ip": 0})
    (daemon.root / "f").write_bytes(b"y" * 20000)
    barrier = concurrent.futures.ThreadPoolExecutor(max_workers=50)

    def session(_: int) -> int:
        client = daemon.ftp(timeout=60)
        out = io.BytesIO()
        client.retrbinary("RETR f", out.write)
        client.quit()
        return len(out.getvalue())

    sizes = list(barrier.map(session, range(50)))
    barrier.shutdown()
    assert sizes == [20000] * 50
    log = daemon.wait_log(r"event=login ", count=50)
    serving_pids = set(re.findall(r"ftpd\[(\d+)\] INFO login of", log))
    assert len(serving_pids) >= 2, serving_pids


def test_passive_ports_during_a_reload_never_collide_or_leave_the_range(make_daemon):
    import signal

    daemon = make_daemon(workers=1, passive_size=2)
    old = daemon.ftp()
    held = _port_of(old.sendcmd("PASV"))  # the old generation holds one port
    daemon.write_config(server={"banner": "generation two"})
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"reload done: generation 2 serving")
    new = daemon.ftp()
    assert "generation two" in new.getwelcome()
    other = _port_of(new.sendcmd("PASV"))  # same slice, but the held port is skipped
    assert other != held and other in daemon.passive
    third = daemon.ftp()
    with pytest.raises(ftplib.error_temp, match="425"):
        third.sendcmd("PASV")  # both ports in use: 425, never a port outside the range
    assert third.voidcmd("NOOP").startswith("200")
    for client in (old, new, third):
        client.quit()

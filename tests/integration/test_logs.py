"""xferlog and JSON event logs written by the daemon; SIGUSR1 reopens them."""

from __future__ import annotations

import io
import json
import signal
import time


def test_xferlog_json_and_reopen_on_sigusr1(make_daemon, tmp_path):
    xferlog = tmp_path / "xferlog"
    events = tmp_path / "events.json"
    daemon = make_daemon(log={"xferlog": str(xferlog), "json": str(events)})
    client = daemon.ftp()
    client.storbinary("STOR up.bin", io.BytesIO(b"z" * 4096))
    client.quit()
    daemon.wait_log(r"event=disconnect")
    line = xferlog.read_text().splitlines()[-1].split()
    assert line[7:9] == ["4096", "/up.bin"] and line[11] == "i" and line[13] == "alice"
    kinds = [json.loads(x)["FTP_EVENT"] for x in events.read_text().splitlines()]
    assert {"connect", "login", "upload", "disconnect"} <= set(kinds)
    assert all("pass" not in x.lower() or "password" not in x.lower()
               for x in events.read_text().splitlines())

    xferlog.rename(tmp_path / "xferlog.1")
    events.rename(tmp_path / "events.json.1")
    daemon.signal(signal.SIGUSR1)
    time.sleep(1)
    assert len(daemon.workers()) == 2  # reopening does not disturb the workers
    client = daemon.ftp()
    client.retrbinary("RETR up.bin", io.BytesIO().write)
    client.quit()
    deadline = time.monotonic() + 10
    while not (xferlog.exists() and xferlog.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert xferlog.read_text().split()[11] == "o"
    assert "download" in events.read_text()
    assert "download" not in (tmp_path / "xferlog.1").read_text()

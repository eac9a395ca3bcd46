"""Event sinks: logfmt, journal fields and encoding, xferlog and JSON lines."""

from __future__ import annotations

import json
import logging
import re

from ftpd import logsinks


def record(event: str, message: str = "msg", **fields: object) -> logging.LogRecord:
    rec = logging.LogRecord("ftpd.events", logging.INFO, __file__, 1, message, None, None)
    rec.ftp_event = event
    rec.ftp_fields = fields
    return rec


def test_logfmt_quotes_client_text():
    rec = record("login_failed", user='bad"\nuser', remote_addr="10.0.0.9")
    text = logsinks.logfmt(rec)
    assert text == ' event=login_failed user="bad\\"\\nuser" remote_addr=10.0.0.9'
    assert "\n" not in text


def test_journal_fields_and_stable_message_ids():
    rec = record("upload", "upload completed", session="ab12", user="alice", path="/x",
                 bytes=5, duration_ms=3, worker=1, remote_addr="10.0.0.1", remote_port=4000)
    fields = logsinks.journal_fields(rec)
    assert fields["FTP_EVENT"] == "upload" and fields["FTP_USER"] == "alice"
    assert fields["FTP_PATH"] == "/x" and fields["FTP_BYTES"] == "5"
    assert fields["REMOTE_ADDR"] == "10.0.0.1" and fields["FTP_WORKER"] == "1"
    assert fields["MESSAGE"].startswith("upload completed event=upload")
    assert re.fullmatch(r"[0-9a-f]{32}", fields["MESSAGE_ID"])
    assert fields["MESSAGE_ID"] == logsinks.message_id("upload")
    assert logsinks.message_id("upload") != logsinks.message_id("download")


def test_journal_native_encoding_handles_newlines():
    data = logsinks._encode({"MESSAGE": "a\nb", "FTP_USER": "alice"})
    assert data.startswith(b"MESSAGE\n" + (3).to_bytes(8, "little") + b"a\nb\n")
    assert data.endswith(b"FTP_USER=alice\n")


def test_xferlog_line(tmp_path):
    sink = logsinks.XferlogHandler(str(tmp_path / "xferlog"))
    sink.emit(record("download", remote_addr="10.0.0.1", bytes=1234, path="/dir/my file.txt",
                     user="alice", duration_ms=2500, mode="binary", completed="true"))
    sink.emit(record("upload", remote_addr="10.0.0.1", bytes=10, path="/u", user="alice",
                     duration_ms=10, mode="ascii", completed="false"))
    sink.emit(record("login", user="alice"))  # not a transfer: ignored
    sink.close()
    lines = (tmp_path / "xferlog").read_text().splitlines()
    assert len(lines) == 2
    fields = lines[0].split()
    # wu-ftpd: date (5 fields), seconds, host, bytes, name, type, flag, direction,
    # access mode, user, service, auth method, auth user id, completion
    assert fields[5:] == ["2", "10.0.0.1", "1234", "/dir/my_file.txt", "b", "_", "o", "r",
                          "alice", "ftp", "0", "*", "c"]
    assert lines[1].split()[5:] == ["1", "10.0.0.1", "10", "/u", "a", "_", "i", "r", "alice",
                                    "ftp", "0", "*", "i"]


def test_json_lines_and_reopen(tmp_path):
    path = tmp_path / "events.json"
    sink = logsinks.JsonLinesHandler(str(path))
    sink.emit(record("login", "login of 'alice'", user="alice", remote_addr="10.0.0.1"))
    path.rename(tmp_path / "events.json.1")
    sink.reopen()
    sink.emit(record("logout", user="alice"))
    sink.close()
    first = json.loads((tmp_path / "events.json.1").read_text())
    assert first["FTP_EVENT"] == "login" and first["FTP_USER"] == "alice"
    assert json.loads(path.read_text())["FTP_EVENT"] == "logout"

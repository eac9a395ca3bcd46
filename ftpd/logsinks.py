"""Where events go besides stderr: the journal, xferlog and JSON lines.

- journald: each event becomes a journal entry with FTP_* fields and a
  stable MESSAGE_ID per event type, so `journalctl FTP_USER=alice` and log
  shippers work without parsing text.
- xferlog: the wu-ftpd transfer log format that existing analyzers read.
- JSON lines: one object per event with the same fields as the journal.

File sinks are reopened on SIGUSR1 (logrotate's postrotate).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import uuid
from typing import Any

# journal field for each event field; anything else becomes FTP_<NAME>.
JOURNAL_FIELDS = {
    "session": "FTP_SESSION", "user": "FTP_USER", "remote_addr": "REMOTE_ADDR",
    "remote_port": "REMOTE_PORT", "path": "FTP_PATH", "bytes": "FTP_BYTES",
    "duration_ms": "FTP_DURATION_MS", "worker": "FTP_WORKER",
}
_NAMESPACE = uuid.UUID("6c5f3e52-3f7e-4f43-9b0a-0a7f0f2c1d11")
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}
JOURNAL_SOCKET = "/run/systemd/journal/socket"


_BARE = re.compile(r"[A-Za-z0-9_.:/@+\-\[\]]+")


def quote(value: Any) -> str:
    """A logfmt value: bare when safe, JSON-quoted otherwise (escapes controls)."""
    text = value if isinstance(value, str) else str(value)
    return text if _BARE.fullmatch(text) else json.dumps(text)


def logfmt(record: logging.LogRecord) -> str:
    """ " event=NAME key=value ..." for an event record, "" otherwise."""
    name = getattr(record, "ftp_event", None)
    if not name:
        return ""
    fields: dict[str, Any] = getattr(record, "ftp_fields", {})
    return " event=" + name + "".join(f" {k}={quote(v)}" for k, v in fields.items())


def message_id(event: str) -> str:
    """A stable MESSAGE_ID (128-bit, hex) for an event type."""
    return uuid.uuid5(_NAMESPACE, f"ftpd.{event}").hex


def journal_fields(record: logging.LogRecord) -> dict[str, str]:
    fields = {
        # The logfmt tail stays in MESSAGE: fail2ban's systemd backend and
        # plain `journalctl` readers see only MESSAGE.
        "MESSAGE": record.getMessage() + logfmt(record),
        "PRIORITY": str(_PRIORITY.get(record.levelno, 6)),
        "SYSLOG_IDENTIFIER": "ftpd",
        "LOGGER": record.name,
    }
    name = getattr(record, "ftp_event", None)
    if name:
        fields["FTP_EVENT"] = name
        fields["MESSAGE_ID"] = message_id(name)
        for key, value in getattr(record, "ftp_fields", {}).items():
            fields[JOURNAL_FIELDS.get(key, "FTP_" + key.upper())] = str(value)
    if record.exc_info:
        fields["MESSAGE"] += "\n" + logging.Formatter().formatException(record.exc_info)
    return fields


def _encode(fields: dict[str, str]) -> bytes:
    """journald's native protocol: KEY=value lines, or a length-prefixed value."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


def stderr_is_journal() -> bool:
    """True when systemd connected our stderr to the journal (JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(x) for x in stream.split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


class JournalHandler(logging.Handler):
    """Sends records to journald over its native datagram socket."""

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.pinned = False

    def pin(self) -> None:
        """Connect now: a session process keeps logging after its chroot(2),
        where the socket's path no longer resolves (isolation.py)."""
        self.sock.connect(self.path)
        self.pinned = True

    def emit(self, record: logging.LogRecord) -> None:
        data = _encode(journal_fields(record))
        try:
            if self.pinned:
                self.sock.send(data)
            else:
                self.sock.sendto(data, self.path)
        except OSError:
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


class FileSink(logging.Handler):
    """A log file opened in append mode that can be reopened after rotation."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.file = self._open()

    def _open(self) -> Any:
        # An explicit mode: workers run with umask 0.
        return open(self.path, "a", encoding="utf-8", buffering=1,
                    opener=lambda path, flags: os.open(path, flags, 0o640))

    def reopen(self) -> None:
        old, self.file = self.file, self._open()
        old.close()

    def write_line(self, line: str) -> None:
        self.file.write(line + "\n")

    def close(self) -> None:
        self.file.close()
        super().close()


class XferlogHandler(FileSink):
    """wu-ftpd xferlog: one line per upload or download."""

    def emit(self, record: logging.LogRecord) -> None:
        name = getattr(record, "ftp_event", None)
        if name not in ("upload", "download"):
            return
        f: dict[str, Any] = getattr(record, "ftp_fields", {})
        seconds = max(1, round(int(f.get("duration_ms", 0)) / 1000))
        path = "".join("_" if c.isspace() else c for c in str(f.get("path", "-")))
        stamp = time.strftime("%a %b %e %H:%M:%S %Y", time.localtime(record.created))
        try:
            self.write_line(" ".join([
                stamp, str(seconds), str(f.get("remote_addr", "-")), str(f.get("bytes", 0)),
                path, "a" if f.get("mode") == "ascii" else "b", "_",
                "i" if name == "upload" else "o", "r", str(f.get("user", "-")), "ftp", "0", "*",
                "c" if f.get("completed") == "true" else "i"]))
        except (OSError, ValueError):
            self.handleError(record)


class JsonLinesHandler(FileSink):
    """One JSON object per event, with the journal's field names."""

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(record, "ftp_event", None):
            return
        fields = journal_fields(record)
        fields.pop("SYSLOG_IDENTIFIER", None)
        fields["TIMESTAMP"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        fields["PID"] = str(record.process)
        try:
            self.write_line(json.dumps(fields, ensure_ascii=False, sort_keys=True))
        except (OSError, ValueError):
            self.handleError(record)

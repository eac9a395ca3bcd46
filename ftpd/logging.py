"""Log set-up and structured events.

Every event (connect, login, upload, ...) is one log record carrying a name
and fields. On stderr it is a human sentence followed by logfmt fields, one
line, with client-supplied text quoted so it cannot forge lines::

    INFO login failed for 'bob' event=login_failed session=1f2e3d4c user=bob \
remote_addr=10.0.0.9 remote_port=40022

The line for failed logins is a stable interface (fail2ban matches it).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, TextIO

from . import logsinks

events = logging.getLogger("ftpd.events")

def event(name: str, message: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event; fields whose value is None are left out."""
    clean = {k: v for k, v in fields.items() if v is not None}
    events.log(level, message, extra={"ftp_event": name, "ftp_fields": clean})


class LogfmtFormatter(logging.Formatter):
    """`TIME ftpd[PID] LEVEL message key=value...` (no time under journald)."""

    def __init__(self, with_time: bool = True) -> None:
        super().__init__()
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        head = f"ftpd[{record.process}] {record.levelname} {record.getMessage()}"
        if self.with_time:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            head = f"{stamp}Z {head}"
        head += logsinks.logfmt(record)
        if record.exc_info:
            head += "\n" + self.formatException(record.exc_info)
        return head


def setup(level: str, xferlog: str = "", json_path: str = "",
          stream: TextIO | None = None) -> None:
    """Send records to the journal (when stderr is connected to it) or stderr,
    and events to the xferlog and JSON files when configured.

    Called before any IOLoop runs, so pyftpdlib does not install its own handler.
    Raises OSError when a log file cannot be opened.
    """
    handlers: list[logging.Handler] = []
    if stream is None and logsinks.stderr_is_journal():
        handlers.append(logsinks.JournalHandler())
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(LogfmtFormatter(with_time="JOURNAL_STREAM" not in os.environ))
        handlers.append(handler)
    if xferlog:
        handlers.append(logsinks.XferlogHandler(xferlog))
    if json_path:
        handlers.append(logsinks.JsonLinesHandler(json_path))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level.upper())
    # pyftpdlib's own session chatter duplicates our events; keep its warnings.
    logging.getLogger("pyftpdlib").setLevel(
        logging.DEBUG if level == "debug" else logging.WARNING)


def reopen() -> None:
    """Reopen log files after rotation (SIGUSR1); errors are logged, not raised."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logsinks.FileSink):
            try:
                handler.reopen()
            except OSError as err:
                logging.getLogger("ftpd").error("cannot reopen %s: %s", handler.path, err)

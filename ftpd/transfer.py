"""The plain data channel, tuned for throughput.

pyftpdlib moves file data in 64 KiB steps: one sendfile() of 64 KiB per
writable event for RETR, one recv() into a fresh 64 KiB bytes object plus a
buffered write for STOR. Each step costs an event-loop round trip, which on
fast links is a large share of the time. Here sendfile() is asked for up to
4 MiB at once (the socket takes what fits; it never blocks), and uploads are
received into one reused buffer and written to the file descriptor directly.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from pyftpdlib.exceptions import _FileReadWriteError
from pyftpdlib.handlers import DTPHandler

SENDFILE_CHUNK = 4 * 1024 * 1024
RECEIVE_BUFFER = 256 * 1024
_DISCONNECTED = {errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.ECONNABORTED,
                 errno.EPIPE, errno.EBADF}


class DataChannel(DTPHandler):
    ac_out_buffer_size = SENDFILE_CHUNK  # the sendfile() count; producers chunk by it too
    ac_in_buffer_size = RECEIVE_BUFFER

    def enable_receiving(self, type: str, cmd: str) -> None:
        super().enable_receiving(type, cmd)
        self._buffer = memoryview(bytearray(RECEIVE_BUFFER))
        self._fd: int | None = None
        # Binary only (ASCII converts line endings), and not when a bandwidth
        # limit wraps recv() (ThrottledDTPHandler layered over this class).
        if self._data_wrapper is None and not getattr(self, "read_limit", 0):
            try:
                self.file_obj.flush()  # REST seeks through the buffered file
                self._fd = self.file_obj.fileno()
            except (AttributeError, OSError, ValueError):
                self._fd = None

    def handle_read(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is None:
            return super().handle_read()
        try:
            size = self.socket.recv_into(self._buffer)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as err:
            if err.errno in _DISCONNECTED:
                self.handle_close()
                return None
            self.handle_error()
            return None
        if not size:
            self.transfer_finished = True
            self.handle_close()
            return None
        self.tot_bytes_received += size
        self._write_all(fd, self._buffer[:size])
        return None

    def _write_all(self, fd: int, data: Any) -> None:
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError as err:  # e.g. ENOSPC: pyftpdlib answers 426 with the reason
            raise _FileReadWriteError(err) from err

    handle_read_event = handle_read

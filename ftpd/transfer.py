"""The plain data channel, tuned for throughput.

pyftpdlib moves file data in 64 KiB steps: one sendfile() of 64 KiB per
writable event for RETR, one recv() into a fresh 64 KiB bytes object plus a
buffered write for STOR. Each step costs an event-loop round trip, which on
fast links is a large share of the time. Here sendfile() is asked for up to
4 MiB at once (the socket takes what fits; it never blocks), and uploads go
from the socket to the file without passing through Python: splice() moves
the received pages into a pipe and from the pipe into the file, one copy
fewer than recv() + write() (about a quarter less CPU per GiB, measured in
bench/RESULTS.md). Where splice() cannot be used (a file opened for append,
a pipe the kernel will not enlarge, a filesystem without splice support) the
upload is received into one reused buffer and written to the descriptor.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Any

from pyftpdlib.exceptions import _FileReadWriteError
from pyftpdlib.handlers import DTPHandler
from pyftpdlib.log import logger as pyftpdlib_logger

SENDFILE_CHUNK = 4 * 1024 * 1024
RECEIVE_BUFFER = 256 * 1024
# One pipe per upload while it runs. Smaller pipes cost more wake-ups; the
# kernel caps unprivileged pipes at fs.pipe-max-size (1 MiB by default) and
# refuses to enlarge them once a user's pipes hold fs.pipe-user-pages-soft.
PIPE_SIZE = 1024 * 1024
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_DISCONNECTED = {errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.ECONNABORTED,
                 errno.EPIPE, errno.EBADF}


def open_splice_pipe(size: int = PIPE_SIZE) -> tuple[int, int] | None:
    """A non-blocking pipe of `size` bytes, or None if the kernel will not give one."""
    if not hasattr(os, "splice"):
        return None
    try:
        r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, size)
    except OSError:
        os.close(r)
        os.close(w)
        return None
    return r, w


def file_error_reason(err: _FileReadWriteError) -> str:
    """"No space left on device" for the error pyftpdlib raises around a file's
    OSError (it keeps the OSError in args, not in errno)."""
    cause = err.args[0] if err.args and isinstance(err.args[0], OSError) else err
    return os.strerror(cause.errno) if cause.errno else "file read/write error"


class FileErrorReply:
    """Data channel mixin: say why a transfer failed on the file side.

    pyftpdlib means to answer "426 <reason>; transfer aborted." but hands its
    strerror() an errno number, so a full disk was answered "426 None" (or
    "426 28"); behind TLS its SSL layer logs a traceback instead.
    """

    def handle_error(self) -> None:
        channel: Any = self
        try:
            raise  # handle_error() is called inside the event loop's except block
        except _FileReadWriteError as err:
            channel._resp = (f"426 {file_error_reason(err)}; transfer aborted.",
                             pyftpdlib_logger.warning)
            channel.close()
        except Exception:
            super().handle_error()  # type: ignore[misc]


class DataChannel(FileErrorReply, DTPHandler):
    ac_out_buffer_size = SENDFILE_CHUNK  # the sendfile() count; producers chunk by it too
    ac_in_buffer_size = RECEIVE_BUFFER

    _fd: int | None = None
    _pipe: tuple[int, int] | None = None

    def enable_receiving(self, type: str, cmd: str) -> None:
        super().enable_receiving(type, cmd)
        # Binary only (ASCII converts line endings), and not when a bandwidth
        # limit wraps recv() (ThrottledDTPHandler layered over this class).
        if self._data_wrapper is not None or getattr(self, "read_limit", 0):
            return
        try:
            self.file_obj.flush()  # REST seeks through the buffered file
            fd = self.file_obj.fileno()
        except (AttributeError, OSError, ValueError):
            return
        self._fd = fd
        if not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:  # splice() refuses O_APPEND
            self._pipe = open_splice_pipe()

    def handle_read(self) -> None:
        fd = self._fd
        if fd is None:
            return super().handle_read()
        try:
            if self._pipe is not None:
                size = os.splice(self.socket.fileno(), self._pipe[1], PIPE_SIZE,
                                 flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            else:
                size = self.socket.recv_into(self._receive_buffer())
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
        if self._pipe is not None:
            self._drain_pipe(fd, size)
        else:
            self._write_all(fd, self._receive_buffer()[:size])
        return None

    handle_read_event = handle_read

    def _receive_buffer(self) -> memoryview:
        """The buffer of the path without splice(), made when first needed."""
        buffer = getattr(self, "_buffer", None)
        if buffer is None:
            buffer = self._buffer = memoryview(bytearray(RECEIVE_BUFFER))
        return buffer

    def _drain_pipe(self, fd: int, size: int) -> None:
        """Move `size` bytes from the pipe into the file."""
        r = self._pipe[0] if self._pipe else -1
        try:
            while size:
                size -= os.splice(r, fd, size, flags=os.SPLICE_F_MOVE)
        except OSError as err:
            if err.errno != errno.EINVAL:  # e.g. ENOSPC: pyftpdlib answers 426 with it
                raise _FileReadWriteError(err) from err
            # This filesystem cannot splice: copy what is in the pipe and
            # receive the rest of the upload through the buffer.
            while size:
                chunk = os.read(r, min(size, RECEIVE_BUFFER))
                self._write_all(fd, chunk)
                size -= len(chunk)
            self._close_pipe()

    def _write_all(self, fd: int, data: Any) -> None:
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError as err:  # e.g. ENOSPC: pyftpdlib answers 426 with the reason
            raise _FileReadWriteError(err) from err

    def _close_pipe(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe:
            os.close(pipe[0])
            os.close(pipe[1])

    def close(self) -> None:
        self._close_pipe()
        super().close()

"""Run blocking calls in threads and deliver results on a pyftpdlib IOLoop.

pyftpdlib's IOLoop is not thread-safe, so a finished call is queued and a
byte on a socket pair wakes the loop, which runs the callbacks in its own thread.
"""

from __future__ import annotations

import collections
import logging
import socket
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pyftpdlib.ioloop import AsyncChat

log = logging.getLogger("ftpd.offload")


class SocketReader(AsyncChat):
    """A socket registered on a pyftpdlib loop: bytes go to `on_data`, EOF to `on_eof`.

    How things outside the loop reach it: thread results (a wake-up socket
    pair), signals (the wake-up fd), a peer process going away (EOF).
    """

    def __init__(self, sock: socket.socket, ioloop: Any, on_data: Callable[[bytes], None],
                 on_eof: Callable[[], None] | None = None) -> None:
        self._on_data, self._on_eof = on_data, on_eof
        super().__init__(sock, ioloop=ioloop)

    def handle_read(self) -> None:
        try:
            data = self.socket.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._on_data(data)
        else:
            self.handle_close()

    def handle_close(self) -> None:
        self.close()
        if self._on_eof is not None:
            self._on_eof()

    def writable(self) -> bool:
        return False


class Offloader:
    """A small thread pool whose results come back on the event loop."""

    def __init__(self, ioloop: Any, threads: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ftpd-offload")
        self._done: collections.deque[tuple[Callable[[Any], None], Future[Any]]] = (
            collections.deque())
        reader, self._wake = socket.socketpair()
        self._wake.setblocking(False)
        self._waker = SocketReader(reader, ioloop, lambda _data: self.run_callbacks())

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...],
               callback: Callable[[Any], None]) -> None:
        """Run fn(*args) in a thread; later call callback(result) on the loop.

        If fn raises, callback receives the exception instance.
        """
        future = self._pool.submit(fn, *args)
        future.add_done_callback(lambda f: self._finished(callback, f))

    def _finished(self, callback: Callable[[Any], None], future: Future[Any]) -> None:
        self._done.append((callback, future))
        try:
            self._wake.send(b"x")
        except OSError:
            pass  # a full buffer already guarantees a wake-up; a closed one, shutdown

    def run_callbacks(self) -> None:
        while self._done:
            callback, future = self._done.popleft()
            try:
                result = future.exception() or future.result()
                callback(result)
            except Exception:
                log.exception("offloaded callback failed")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._waker.close()
        self._wake.close()

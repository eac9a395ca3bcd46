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


class _Waker(AsyncChat):
    """The read end of the wake-up socket pair, registered in the IOLoop."""

    def __init__(self, offloader: Offloader, sock: socket.socket, ioloop: Any) -> None:
        self._offloader = offloader
        super().__init__(sock, ioloop=ioloop)

    def handle_read(self) -> None:
        try:
            self.socket.recv(4096)
        except BlockingIOError:
            pass
        self._offloader.run_callbacks()

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
        self._waker = _Waker(self, reader, ioloop)

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

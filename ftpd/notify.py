"""sd_notify: readiness, status, reload and watchdog messages to systemd.

The protocol is one datagram to $NOTIFY_SOCKET (what libsystemd's sd_notify
sends), so no compiled dependency is needed for it. Without NOTIFY_SOCKET
(not under systemd) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self) -> None:
        self._address = os.environ.get("NOTIFY_SOCKET", "")
        self._last_status = ""
        try:
            watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0"))
            watchdog_pid = int(os.environ.get("WATCHDOG_PID", str(os.getpid())))
        except ValueError:
            watchdog_usec, watchdog_pid = 0, 0
        self.watchdog_interval = (watchdog_usec / 2e6
                                  if watchdog_usec and watchdog_pid == os.getpid() else 0.0)

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, *fields: str) -> None:
        if not self._address:
            return
        address = self._address
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract socket namespace
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, address)
        except OSError:
            pass  # systemd going away must never take the daemon down

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

"""The small TCP listener and probe the lab runs inside its namespaces.

They are plain Python scripts run with the test's interpreter in a host of the
lab, so a test sees connections exactly as that host does (the peer address
and port after NAT).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from dataclasses import dataclass

# A TCP server for topology checks: greets each peer with "hello <ip>:<port>", answers
# "ack" to each chunk the peer sends (so a client can pace its commands, one per packet, as
# the conntrack FTP helper expects) and at EOF reports the connection as one JSON line.
LISTENER_SCRIPT = r"""
import json, selectors, socket, sys, threading
def serve(conn, peer, lport):
    conn.settimeout(3)
    data = b""
    try:
        conn.sendall(f"hello {peer[0]}:{peer[1]}\n".encode())
        while chunk := conn.recv(4096):
            data += chunk
            conn.sendall(b"ack\n")
    except OSError:
        pass
    conn.close()
    event = {"ip": peer[0], "port": peer[1], "lport": lport, "data": data.decode("latin-1")}
    print(json.dumps(event), flush=True)
sel = selectors.DefaultSelector()
for port in sys.argv[1:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port)))
    s.listen(64)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        conn, peer = key.fileobj.accept()
        lport = conn.getsockname()[1]
        threading.Thread(target=serve, args=(conn, peer, lport), daemon=True).start()
"""

# A TCP client: connect (optionally from a fixed source port), read the greeting, send each
# payload in its own segment and wait for its ack, and report the outcome as one JSON line.
PROBE_SCRIPT = r"""
import json, socket, sys
addr, port, timeout, sport, *payloads = sys.argv[1:]
s = socket.socket()
s.settimeout(float(timeout))
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
result = {"error": "", "reply": ""}
try:
    if int(sport):
        s.bind(("0.0.0.0", int(sport)))
    s.connect((addr, int(port)))
    result["reply"] = s.recv(4096).decode("latin-1")
    for payload in payloads:
        s.sendall(payload.encode("latin-1"))
        s.recv(4096)
    s.shutdown(socket.SHUT_WR)
    while s.recv(4096):
        pass
except TimeoutError:
    result["error"] = "timeout"
except ConnectionRefusedError:
    result["error"] = "refused"
except OSError as e:
    result["error"] = e.strerror or str(e)
print(json.dumps(result))
"""


@dataclass(frozen=True)
class Probe:
    """Outcome of :meth:`Lab.connect`: ``error`` is "" on success, else "timeout",
    "refused" or the OS error text; ``reply`` is the greeting the server sent."""

    error: str
    reply: str
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class Accepted:
    """One connection a :class:`Listener` served: the peer as the server saw it."""

    ip: str
    port: int
    lport: int
    data: str


class Listener:
    """A TCP server started by :meth:`Lab.listen`; reports each connection it served."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self._buffer = b""

    def _readline(self, timeout: float) -> str | None:
        """Next stdout line, or None at timeout/EOF (raw fd reads: no hidden buffering)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def wait_ready(self, timeout: float = 5.0) -> None:
        line = self._readline(timeout)
        if line != "ready":
            self.close()
            raise RuntimeError(f"listener did not start (got {line!r})")

    def accepted(self, timeout: float = 2.0) -> Accepted | None:
        """The next connection served, or None if there is none within ``timeout``."""
        line = self._readline(timeout)
        return None if line is None else Accepted(**json.loads(line))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

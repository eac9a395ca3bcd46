"""The bare loopback copy each timed FTP transfer is paired with.

A one-shot server in a thread speaks just enough HTTP/1.0 for curl, so the paired copy
uses the same client, the same buffers and the same /dev/null or disk as the FTP transfer:
downloads are answered with os.sendfile() of the same file, uploads are recv()ed and
written to disk in 256 KiB chunks. What remains of the difference is the FTP server.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

CHUNK = 256 * 1024
ACCEPT_TIMEOUT_S = 60.0
MAX_HEADER = 64 * 1024


class BareServer(threading.Thread):
    """Serve exactly one request on host:<ephemeral>, then exit.

    mode "send": answer with `path` through sendfile(); mode "recv": store the request
    body in `path`.
    """

    def __init__(self, host: str, mode: str, path: Path) -> None:
        super().__init__(name=f"bare-{mode}", daemon=True)
        if mode not in {"send", "recv"}:
            raise ValueError(mode)
        self.mode = mode
        self.path = path
        self.bytes = 0
        self.error: BaseException | None = None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.bind((host, 0))
        self.listener.listen(1)
        self.listener.settimeout(ACCEPT_TIMEOUT_S)
        self.port: int = self.listener.getsockname()[1]

    def run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(ACCEPT_TIMEOUT_S)
                head, body = read_request_head(conn)
                if self.mode == "send":
                    self._send(conn)
                else:
                    self._recv(conn, content_length(head), body)
        except BaseException as exc:  # reported to the caller through .error
            self.error = exc
        finally:
            self.listener.close()

    def _send(self, conn: socket.socket) -> None:
        conn.settimeout(None)  # os.sendfile() wants a blocking socket; curl has a timeout
        with self.path.open("rb") as src:
            size = os.fstat(src.fileno()).st_size
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                         % size)
            offset = 0
            while offset < size:
                sent = os.sendfile(conn.fileno(), src.fileno(), offset, size - offset)
                if sent == 0:
                    break
                offset += sent
            self.bytes = offset

    def _recv(self, conn: socket.socket, length: int, already: bytes) -> None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if already:
                os.write(fd, already)
            got = len(already)
            while got < length:
                n = conn.recv_into(view, min(CHUNK, length - got))
                if n == 0:
                    break
                os.write(fd, view[:n])
                got += n
        finally:
            os.close(fd)
        self.bytes = got
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def read_request_head(conn: socket.socket) -> tuple[bytes, bytes]:
    """(request line + headers, body bytes that came with them)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("client closed before the request ended")
        data += chunk
        if len(data) > MAX_HEADER:
            raise ValueError("request head too large")
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    raise ValueError("upload without Content-Length")

"""systemd socket activation: adopt the listening sockets systemd passes.

ftpd stays one persistent service (Accept=no): the supervisor adopts the
sockets and its workers accept on them, just as on sockets it bound itself.
"""

from __future__ import annotations

import os
import socket

from .settings import Endpoint

SD_LISTEN_FDS_START = 3


def adopt_listen_fds() -> dict[Endpoint, socket.socket]:
    """The sockets passed by systemd (LISTEN_FDS for our pid), keyed by address."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return {}
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return {}
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for our children
    adopted = {}
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM:
            sock.detach()
            continue
        host, port = sock.getsockname()[:2]
        adopted[Endpoint(host, port)] = sock
    return adopted

"""Passive data ports: a disjoint slice per worker and a bind that cannot race.

pyftpdlib binds passive sockets with SO_REUSEADDR and calls listen() outside
its retry loop, so two processes can bind the same port and the loser's
listen() error drops the client's control connection. When the range is
full it silently falls back to a kernel-chosen port outside the range. Here
each worker scans only its own slice, bind *and* listen are retried together,
and a full slice is answered with 425 while the session carries on.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import random
import socket
from typing import Any

from pyftpdlib.handlers.ftp.dispatchers import PassiveDTP
from pyftpdlib.ioloop import Acceptor

from .logging import event

# Errors that mean "this port is taken right now, try the next one".
_PORT_BUSY = (errno.EADDRINUSE, errno.EACCES, errno.EPERM)


def worker_slice(ports: range, workers: int, index: int) -> range:
    """The ports of worker `index` (0-based): contiguous, disjoint, covering `ports`."""
    if not 0 <= index < workers or len(ports) < workers:
        raise ValueError(f"cannot split {len(ports)} ports among {workers} workers")
    size, extra = divmod(len(ports), workers)
    start = ports.start + index * size + min(index, extra)
    return range(start, start + size + (1 if index < extra else 0))


def bind_listener(family: int, host: str, ports: range, backlog: int) -> socket.socket | None:
    """A socket listening on a free port of `ports`, or None when all are busy."""
    if not ports:
        return None
    start = random.randrange(len(ports))  # spread reuse so TIME_WAIT pairs rarely collide
    for i in range(len(ports)):
        port = ports[(start + i) % len(ports)]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # Needed to reuse a port whose previous data connection is in
            # TIME_WAIT; safe because listen() below fails if another socket
            # already listens on the port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(backlog)
        except OSError as err:
            sock.close()
            if err.errno in _PORT_BUSY:
                continue
            raise
        return sock
    return None


def _ipv4(address: str) -> str | None:
    if address.startswith("::ffff:"):
        address = address[7:]
    try:
        return address if ipaddress.ip_address(address).version == 4 else None
    except ValueError:
        return None


class RangePassiveDTP(PassiveDTP):
    """PASV/EPSV listener confined to the worker's port slice."""

    def __init__(self, cmd_channel: Any, extmode: bool = False) -> None:
        # Replaces PassiveDTP.__init__ (its bind loop is the bug); the
        # accept/timeout behaviour of PassiveDTP is kept as is.
        self.cmd_channel = cmd_channel
        self.log = cmd_channel.log
        self.log_exception = cmd_channel.log_exception
        Acceptor.__init__(self, ioloop=cmd_channel.ioloop)

        local_ip = cmd_channel.socket.getsockname()[0]
        advertised = None
        if not extmode:
            advertised = _ipv4(cmd_channel.passive_address() or local_ip)
            if advertised is None:
                cmd_channel.respond("425 PASV needs IPv4; use EPSV on this connection.")
                cmd_channel.count("pasv_refused_ipv6")
                self.close()
                return

        ports = cmd_channel.passive_ports
        sock = bind_listener(cmd_channel.socket.family, local_ip, ports, self.backlog or 5)
        if sock is None:
            cmd_channel.respond("425 No passive port free right now (the server's passive "
                                "range is exhausted); retry shortly.")
            cmd_channel.count("425_range_exhausted")
            event("passive_exhausted",
                  f"no free passive port in {ports.start}-{ports.stop - 1} for this worker; "
                  "widen [passive] ports", logging.WARNING, session=cmd_channel.session_id,
                  remote_addr=cmd_channel.remote_ip)
            self.close()
            return
        sock.setblocking(False)
        self.set_socket(sock)
        self.accepting = True  # what asyncore's listen() would have set

        port = sock.getsockname()[1]
        if extmode:
            cmd_channel.count("epsv")
            cmd_channel.respond(f"229 Entering extended passive mode (|||{port}|).")
        else:
            cmd_channel.count("pasv")
            assert advertised is not None
            cmd_channel.respond("227 Entering passive mode (%s,%d,%d)." % (
                advertised.replace(".", ","), port // 256, port % 256))
        if self.timeout:
            self.call_later(self.timeout, self.handle_timeout)

    def handle_timeout(self) -> None:
        # pyftpdlib answers 421, which clients read as "closing the session",
        # even when no command waits for the data. Answer only a waiting
        # LIST/RETR/STOR (it already got its 150), with a 425 saying why.
        channel = self.cmd_channel
        port = self.socket.getsockname()[1] if self.socket is not None else 0
        if channel.connected and _fail_queued(channel, (
                f"425 No data connection arrived on port {port} within {self.timeout} s: a "
                "firewall or NAT between you and the server blocks it (the admin must "
                "forward the passive ports and set [passive] address).")):
            channel.count("425_timeout")
        else:
            channel.count("passive_expired")
        self._close_and_forget()

    def _close_and_forget(self) -> None:
        # pyftpdlib would keep the closed listener referenced, so the session
        # would never look idle (a stop would wait for it).
        self.close()
        if self.cmd_channel._dtp_acceptor is self:
            self.cmd_channel._dtp_acceptor = None

    def handle_accepted(self, sock: Any, addr: Any) -> None:
        channel = self.cmd_channel
        if (channel.connected and not channel.permit_foreign_addresses
                and _same_host(addr[0], channel.remote_ip) is False):
            # Someone else reached the port first (a scan, or a port thief).
            # pyftpdlib sends an unsolicited 425 and keeps waiting, which puts
            # client and server out of step; answer only a waiting command.
            sock.close()
            event("data_foreign_rejected",
                  f"data connection from {addr[0]} to a passive port of this session "
                  "refused: not the client's address", logging.WARNING,
                  session=channel.session_id, remote_addr=channel.remote_ip, peer=addr[0])
            if _fail_queued(channel, f"425 Rejected data connection from foreign address "
                                     f"{addr[0]}; retry with a new PASV/EPSV."):
                channel.count("425_foreign_address")
                self._close_and_forget()
            else:
                channel.count("foreign_data_rejected")
            return
        super().handle_accepted(sock, addr)


def _same_host(a: str, b: str) -> bool | None:
    """Whether two peer addresses are the same host (v4-mapped = IPv4); None if unparsable."""
    try:
        left, right = ipaddress.ip_address(a.split("%")[0]), ipaddress.ip_address(b.split("%")[0])
    except ValueError:
        return None
    left = getattr(left, "ipv4_mapped", None) or left
    right = getattr(right, "ipv4_mapped", None) or right
    return left == right


def _fail_queued(channel: Any, reply: str) -> bool:
    """Answer a transfer command waiting for its data connection with `reply`
    and forget it; False when nothing waits."""
    queued_out, queued_in = channel._out_dtp_queue, channel._in_dtp_queue
    if queued_out is None and queued_in is None:
        return False
    channel._out_dtp_queue = channel._in_dtp_queue = None
    for file in (queued_out[2] if queued_out else None, queued_in[0] if queued_in else None):
        if file is not None:
            file.close()
    channel.respond(reply)
    return True
